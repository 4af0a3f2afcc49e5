"""The pieces of the pretraining engine on their own: config loading, schedule, optimizer groups,
stage planning and the row sampler."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from chuan.config import ConfigError, apply_overrides, from_dict, load_config
from chuan.model import BaichuanForCausalLM, preset_config
from chuan.train.config import PretrainConfig, load_pretrain_config
from chuan.train.data import PackedRows
from chuan.train.distributed import World
from chuan.train.loop import plan_stages
from chuan.train.optim import freeze_non_embeddings, lr_factor, param_groups

BASE = {"out": "runs/x", "preset": "tiny", "tokenizer": "tok", "stages": [{"data": ["d"]}]}


def test_yaml_and_overrides_build_typed_configs(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(
        "out: runs/a\npreset: tiny\ntokenizer: tok\noptim: {lr: 3e-4, betas: [0.9, 0.95]}\n"
        "stages:\n  - {data: [d1], steps: 10}\n"
        "  - {data: [d2], tokens: 1e6, freeze: non_embeddings}\n"
    )
    cfg = load_pretrain_config(path, ["optim.lr=1e-3", "stages.1.lr=5e-5", "log.tensorboard=false"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.stages[0].steps == 10 and cfg.stages[1].tokens == 1_000_000
    assert cfg.stages[1].lr == 5e-5 and cfg.stages[1].freeze == "non_embeddings"
    assert cfg.log.tensorboard is False
    assert isinstance(cfg.stages[1].tokens, int)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"learning_rate": 1}}, r"unknown key 'optim\.learning_rate'"),
        ({"optim": {"lr": "fast"}}, r"optim\.lr: expected float"),
        ({"stages": [{"data": ["d"], "freeze": "all"}]}, r"stages\.0\.freeze: 'all' is not one of"),
        ({"micro_batch_size": 2.5}, r"micro_batch_size: expected int"),
        ({"model": "dir"}, "exactly one of `model`"),
        ({"stages": []}, "`stages` is empty"),
        ({"stages": [{"data": ["d"], "steps": 1, "tokens": 5}]}, r"stages\.0: give `steps` or"),
    ],
)
def test_bad_configs_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(PretrainConfig, {**BASE, **change})


def test_overrides_and_yaml_reject_malformed_input(tmp_path):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides({"stages": [{}]}, ["stages.3.steps=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("out: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(PretrainConfig, bad)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    total, warmup, floor = 110, 10, 0.1
    assert lr_factor(0, total, warmup, floor) == pytest.approx(0.1)
    assert lr_factor(9, total, warmup, floor) == pytest.approx(1.0)
    assert lr_factor(10, total, warmup, floor) == pytest.approx(1.0)
    middle = warmup + (total - warmup - 1) / 2
    assert lr_factor(int(middle), total, warmup, floor) == pytest.approx(
        floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * int(middle - warmup) / 99))
    )
    assert lr_factor(total - 1, total, warmup, floor) == pytest.approx(floor)
    assert lr_factor(60, total, warmup, floor, "linear") == pytest.approx(
        floor + 0.9 * (1 - 50 / 99)
    )
    assert lr_factor(60, total, warmup, floor, "constant") == 1.0


def test_weight_decay_skips_norms_and_frozen_parameters():
    model = BaichuanForCausalLM(preset_config("tiny", vocab_size=256))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert all(p.ndim == 2 for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)
    trainable = freeze_non_embeddings(model)
    assert trainable == ["model.embed_tokens.weight", "lm_head.weight"]
    decay, no_decay = param_groups(model, 0.1)
    assert len(decay["params"]) == 2 and not no_decay["params"]


def _packed(path, rows: int, length: int = 8, buckets: int = 2):
    ids = np.arange(rows * length, dtype=np.int32).reshape(rows, length)
    Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "segment_ids": np.ones_like(ids).tolist(),
            "loss_mask": np.ones_like(ids, dtype=np.int8).tolist(),
            "category": ["x"] * rows,
            "bucket": [i * buckets // rows for i in range(rows)],
        }
    ).save_to_disk(str(path))
    return str(path)


def test_rows_are_a_pure_function_of_the_sample_index(tmp_path):
    path = _packed(tmp_path / "p", rows=10)
    rows = PackedRows.from_disk([path], shuffle=True, seed=3)
    first_epoch = [rows.row(k) for k in range(10)]
    assert sorted(first_epoch) == list(range(10)) and first_epoch != list(range(10))
    second_epoch = [rows.row(k) for k in range(10, 20)]
    assert sorted(second_epoch) == list(range(10)) and second_epoch != first_epoch
    again = PackedRows.from_disk([path], shuffle=True, seed=3)
    assert [again.row(k) for k in reversed(range(20))] == (first_epoch + second_epoch)[::-1]
    ordered = PackedRows.from_disk([path], shuffle=False)
    batch = ordered.batch(range(2, 4))
    assert batch.input_ids[:, 0].tolist() == [16, 24]
    assert (batch.labels[:, 0] == -100).all() and (
        batch.labels[:, 1:] == batch.input_ids[:, 1:]
    ).all()


def test_buckets_and_holdout_select_rows(tmp_path):
    path = _packed(tmp_path / "p", rows=10)
    held = {str(Path(path).resolve()): 3}
    first_bucket = PackedRows.from_disk([path], buckets=[0], shuffle=False)
    assert len(first_bucket) == 5
    train = PackedRows.from_disk([path], holdout=held, shuffle=False)
    evaluation = PackedRows.from_disk([path], holdout=held, take_holdout=True, shuffle=False)
    assert len(train) == 7 and len(evaluation) == 3
    assert evaluation.batch([0]).input_ids[0, 0] == 7 * 8


def test_stage_length_from_tokens_rounds_up_to_whole_steps(tmp_path):
    path = _packed(tmp_path / "p", rows=40)
    cfg = from_dict(
        PretrainConfig,
        {
            **BASE,
            "micro_batch_size": 2,
            "grad_accum": 3,
            "stages": [
                {"data": [path], "tokens": 1000},
                {"data": [path]},
                {"data": [path], "steps": 2},
            ],
        },
    )
    world = World(rank=0, size=2, local_rank=0, device=torch.device("cpu"))
    plans = plan_stages(cfg, world, {})
    # 12 rows of 8 tokens per step: 1000 tokens -> 11 steps; one pass over 40 rows -> 3 steps
    assert [p.steps for p in plans] == [11, 3, 2]
    assert plans[0].warmup == 11  # warmup is capped at the stage length


CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# scaling-*.yaml are sweeps (a base recipe x a grid), checked in test_scaling.py; *-sft.yaml,
# sft-*.yaml, dpo-*.yaml and rm-*.yaml are post-training recipes, checked in tests/align/
RECIPES = sorted(
    p
    for p in CONFIGS.glob("*.yaml")
    if not p.stem.startswith("scaling-")
    and not {"sft", "dpo", "rm", "ppo", "grpo"} & set(p.stem.split("-"))
)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_recipe_loads(recipe):
    cfg = load_pretrain_config(recipe)
    if cfg.preset is not None:
        preset_config(cfg.preset)  # a known preset
    assert cfg.stages and all(stage.data for stage in cfg.stages)


def test_published_settings_are_in_the_baichuan2_recipes():
    root = Path(__file__).resolve().parents[2] / "configs"
    seven, thirteen = (load_pretrain_config(root / f"baichuan2-{s}.yaml") for s in ("7b", "13b"))
    for cfg in (seven, thirteen):
        assert (cfg.optim.betas, cfg.optim.weight_decay, cfg.optim.grad_clip) == (
            (0.9, 0.95),
            0.1,
            0.5,
        )
        assert (cfg.optim.warmup_steps, cfg.z_loss_weight, cfg.precision) == (2000, 2e-4, "bf16")
        assert cfg.stages[0].tokens == 2_600_000_000_000
    assert (seven.optim.lr, thirteen.optim.lr) == (2e-4, 1.5e-4)
    assert preset_config(thirteen.preset).position_encoding == "alibi"
