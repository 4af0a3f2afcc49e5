"""`chuan dpo` on real text with a learnable preference: translation prompts from the bundled
Tatoeba set, the right translation chosen over a copy of the untranslated input. Learning, the
reference (precomputed, on the fly, adapter off), the global-batch mean, exact resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.align.dpo import DPOTrainer, dpo
from chuan.align.dpo_config import DPOConfig
from chuan.cli import main
from chuan.config import ConfigError, from_dict
from chuan.infer.loading import load_model
from chuan.train.checkpoint import latest_checkpoint
from chuan.train.distributed import close_world, init_world
from helpers.cli_runs import chuan_process, finish, kill_after
from helpers.pretrain_fixtures import write_config
from helpers.sft_fixtures import translate_or_copy_pairs


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return translate_or_copy_pairs(tmp_path_factory.mktemp("pairs") / "translate_or_copy.jsonl")


def _config(out: Path, base: Path, data: Path, **fields) -> dict:
    config = {
        "out": str(out),
        "model": str(base),
        "seed": 7,
        "max_length": 96,
        "micro_batch_size": 8,
        "finetune": "lora",
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targets": ["all-linear"]},
        "optim": {"lr": 3e-3},
        "eval": {"holdout": 40, "max_rows": 40},
        "samples": {"prompts": 0},
        "checkpoint": {"every": 3, "keep": 2},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [{"path": str(data)}], "steps": 8}],
    }
    return config | fields


def _trainer(cfg: dict):
    return DPOTrainer(from_dict(DPOConfig, cfg), init_world("cpu", None))


def test_dpo_raises_held_out_preference_accuracy_and_margin(tmp_path, base_dir, pairs):
    config = _config(
        tmp_path / "run",
        base_dir,
        pairs,
        precompute_reference=True,
        stages=[{"data": [{"path": str(pairs)}], "steps": 30}],
    )
    result = dpo(from_dict(DPOConfig, config))
    report = json.loads((result.run_dir / "report.json").read_text())
    first, last = report["held_out_first"], report["held_out_last"]
    # Policy == reference at step 0 (the adapter starts at zero): every pair's loss is ln 2.
    assert first["eval_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert first["eval_reward_margin"] == pytest.approx(0, abs=1e-5)
    assert last["eval_reward_accuracy"] >= 0.9, last
    assert last["eval_reward_margin"] > 0.5, last
    assert last["eval_loss"] < 0.5 * first["eval_loss"]
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    trained = [r for r in records if "loss" in r]
    assert {"reward_margin", "reward_accuracy", "logp_chosen", "logp_rejected"} <= set(trained[0])
    assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    assert (result.model_dir / "model.safetensors").is_file()
    # Resuming the finished run redoes only its end and keeps the report's numbers.
    again = dpo(from_dict(DPOConfig, config), resume="auto")
    assert again.final_loss == result.final_loss
    redone = json.loads((result.run_dir / "report.json").read_text())
    assert redone["held_out_first"] == first and redone["final_loss"] == report["final_loss"]


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_precomputed_reference_equals_on_the_fly_bit_for_bit(tmp_path, base_dir, pairs, finetune):
    """The precompute pass's numbers, stored with the rows and read back in a batch, equal
    the on-the-fly scores of the same pairs in any batch composition."""
    trainer = _trainer(_config(tmp_path / "run", base_dir, pairs, finetune=finetune))
    try:
        rows = trainer.plans[0].rows
        stored = rows.with_reference(trainer._score_reference(trainer.model, rows))
        order = random.Random(0).sample(range(len(rows)), 16)  # any batch composition
        expected = stored.rows_batch(order).reference
        got = trainer._reference_logps(trainer.model, rows, order)
        assert torch.equal(got.cpu(), expected)
    finally:
        close_world(trainer.world)


@pytest.mark.interop
def test_adapter_off_reference_is_the_base_model(tmp_path, base_dir, pairs):
    trainer = _trainer(_config(tmp_path / "run", base_dir, pairs))
    try:
        trainer.run(None)
        ids = torch.randint(3, 300, (2, 20), generator=torch.Generator().manual_seed(0))
        base = load_model(base_dir, device="cpu", dtype="fp32").eval()
        with torch.no_grad(), trainer._reference_model(trainer.model) as reference:
            off = reference(input_ids=ids).logits
        with torch.no_grad():
            on = trainer.model.eval()(input_ids=ids).logits
            torch.testing.assert_close(off, base(input_ids=ids).logits, atol=0, rtol=0)
        assert not torch.allclose(on, off, atol=1e-4)  # the adapter did train
    finally:
        close_world(trainer.world)


@pytest.mark.parametrize("loss", ["ipo", "hinge", "simpo", "orpo"])
def test_every_loss_trains(tmp_path, base_dir, pairs, loss):
    fields = {"loss": loss, "stages": [{"data": [{"path": str(pairs)}], "steps": 3}]}
    if loss == "ipo":
        fields["beta"] = 0.5
    result = dpo(from_dict(DPOConfig, _config(tmp_path / "run", base_dir, pairs, **fields)))
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["loss"] == loss and math.isfinite(report["final_loss"])
    assert (
        report["held_out_last"]["eval_reward_margin"]
        > report["held_out_first"]["eval_reward_margin"]
    )


def test_cdpo_and_reference_free_settings_are_checked(tmp_path, base_dir, pairs):
    with pytest.raises(ConfigError, match="reference"):
        from_dict(DPOConfig, _config(tmp_path, base_dir, pairs, loss="simpo", reference="x"))
    with pytest.raises(ConfigError, match="label_smoothing"):
        from_dict(DPOConfig, _config(tmp_path, base_dir, pairs, loss="ipo", label_smoothing=0.1))
    with pytest.raises(ConfigError, match="packing"):
        from_dict(DPOConfig, _config(tmp_path, base_dir, pairs, packing=True))


def test_accumulation_and_two_ranks_give_the_single_process_loss(tmp_path, base_dir, pairs):
    """8 pairs in one micro-batch, 2 x 4 accumulated, and two torchrun ranks (gloo) x 4: the
    same global batch, so the same mean loss over its pairs at every step."""
    losses = {}
    for name, fields in {
        "single": {},
        "accumulated": {"micro_batch_size": 2, "grad_accum": 4},
        "ranks": {"micro_batch_size": 4},
    }.items():
        fields |= {"stages": [{"data": [{"path": str(pairs)}], "steps": 4}]}
        config = _config(tmp_path / name, base_dir, pairs, **fields)
        if name == "ranks":
            finish(chuan_process("dpo", write_config(tmp_path / "ranks.yaml", config), nproc=2))
            run_dir = tmp_path / name
        else:
            run_dir = dpo(from_dict(DPOConfig, config)).run_dir
        metrics = (run_dir / "metrics.jsonl").open()
        losses[name] = [json.loads(x)["loss"] for x in metrics if '"loss"' in x]
    assert len(losses["single"]) == 4
    for name in ("accumulated", "ranks"):
        diffs = [abs(a - b) for a, b in zip(losses["single"], losses[name], strict=True)]
        assert max(diffs) < 1e-5, (name, losses)


def test_sigkill_then_resume_ends_bit_identical(tmp_path, base_dir, pairs):
    """The uninterrupted run scores the reference on the fly; the killed one precomputes it."""
    few = tmp_path / "pairs.jsonl"  # 200 pairs: precomputing scores each one alone
    few.write_text("".join(pairs.read_text(encoding="utf-8").splitlines(True)[:200]), "utf-8")
    small_eval = {"holdout": 8, "max_rows": 8}
    reference = _config(tmp_path / "reference", base_dir, few, eval=small_eval)
    finish(chuan_process("dpo", write_config(tmp_path / "reference.yaml", reference)))
    run = _config(tmp_path / "run", base_dir, few, precompute_reference=True, eval=small_eval)
    config = write_config(tmp_path / "run.yaml", run)
    steps = random.Random().randrange(4, 8)
    kill_after(chuan_process("dpo", config), tmp_path / "run", steps)
    assert latest_checkpoint(tmp_path / "run") is not None
    finish(chuan_process("dpo", config, "--resume", "auto"))
    name = "adapter/adapter_model.safetensors"
    expected, got = load_file(tmp_path / "reference" / name), load_file(tmp_path / "run" / name)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), f"{key} (killed at {steps})"


def test_inspect_shows_both_answers(tmp_path, base_dir, pairs, capsys):
    config = tmp_path / "dpo.json"
    config.write_text(json.dumps(_config(tmp_path / "run", base_dir, pairs)), encoding="utf-8")
    main(["dpo", "--config", str(config), "--inspect", "1"])
    out = capsys.readouterr().out
    assert out.count("⟦") == 2 and "chosen:" in out and "rejected:" in out
    assert not (tmp_path / "run").exists()


def test_tiny_recipe_aligns_the_tiny_chat_model_on_bundled_pairs():
    from chuan.align.dpo_config import load_dpo_config
    from chuan.align.sft_config import load_sft_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_dpo_config(root / "configs" / "dpo-tiny-cpu.yaml")
    assert (cfg.loss, cfg.loss_beta, cfg.finetune, cfg.precompute_reference) == (
        "sigmoid",
        0.1,
        "lora",
        True,
    )
    assert all((root / s.path).is_file() for stage in cfg.stages for s in stage.data)
    sft = load_sft_config(root / "configs" / "sft-tiny-cpu.yaml")
    assert cfg.model == f"{sft.out}/model"  # what the SFT recipe writes
