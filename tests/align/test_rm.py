"""`chuan rm`: the reward model class against transformers' LLaMA classifier, learning a
learnable preference, accuracy by margin, the LoRA merge, scoring files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from chuan.align.rm import RewardTrainer, rm, score_file
from chuan.align.rm_config import RMConfig, load_rm_config
from chuan.config import ConfigError, from_dict
from chuan.errors import InputError
from chuan.infer.loading import load_model
from chuan.model.convert import baichuan_to_llama, load_reward_model
from chuan.model.modeling import BaichuanForSequenceClassification
from chuan.model.presets import preset_config
from chuan.train.distributed import close_world, init_world
from helpers.cli_runs import chuan_process, finish
from helpers.pretrain_fixtures import write_config
from helpers.sft_fixtures import TRANSLATIONS, translate_or_copy_pairs

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """Learnable pairs whose records alternate margins 1 and 3."""
    path = tmp_path_factory.mktemp("rm-pairs") / "translate_or_copy.jsonl"
    return translate_or_copy_pairs(path, margins=(1.0, 3.0))


def _config(out: Path, base: Path, data: Path, **fields) -> dict:
    config = {
        "out": str(out),
        "model": str(base),
        "seed": 11,
        "max_length": 96,
        "micro_batch_size": 8,
        "finetune": "full",
        "optim": {"lr": 1e-3},
        "eval": {"holdout": 64, "max_rows": 64},
        "samples": {"prompts": 0},
        "checkpoint": {"every": 1000, "keep": 1},
        "log": {"every": 1, "tensorboard": False, "progress": False},
        "stages": [{"data": [{"path": str(data)}], "steps": 25}],
    }
    return config | fields


@pytest.mark.interop
def test_score_is_read_at_the_last_real_token_as_transformers_llama_does():
    """The same weights in `LlamaForSequenceClassification` (right padding, found through a
    pad id) give the same scores; left padding gives them too."""
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(0)
    config = preset_config("tiny", vocab_size=300, num_labels=1)
    model = BaichuanForSequenceClassification(config).eval()
    state = dict(model.state_dict())
    score = state.pop("score.weight")
    state["lm_head.weight"] = torch.zeros(config.vocab_size, config.hidden_size)
    llama_config, llama_state = baichuan_to_llama(config, state)
    llama_state.pop("lm_head.weight")
    llama_config.num_labels, llama_config.pad_token_id = 1, 299
    llama = LlamaForSequenceClassification(llama_config).eval()
    llama.load_state_dict({**llama_state, "score.weight": score})
    lengths = [9, 5, 7]
    ids = torch.randint(3, 299, (3, 9), generator=torch.Generator().manual_seed(1))
    right = torch.full((3, 9), 299)
    left = torch.full((3, 9), 299)
    right_mask, left_mask = torch.zeros(3, 9, dtype=torch.long), torch.zeros(3, 9, dtype=torch.long)
    for i, n in enumerate(lengths):
        right[i, :n], right_mask[i, :n] = ids[i, :n], 1
        left[i, 9 - n :], left_mask[i, 9 - n :] = ids[i, :n], 1
    with torch.no_grad():
        expected = llama(input_ids=right).logits[:, 0]
        got_right = model(input_ids=right, attention_mask=right_mask).logits[:, 0]
        got_left = model(input_ids=left, attention_mask=left_mask).logits[:, 0]
    torch.testing.assert_close(got_right, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_left, expected, atol=1e-5, rtol=1e-5)


def test_reward_model_learns_the_preference_and_reports_accuracy_by_margin(
    tmp_path, base_dir, pairs, test_data
):
    config = _config(tmp_path / "run", base_dir, pairs, margin=True, center_rewards=0.01)
    result = rm(from_dict(RMConfig, config))
    report = json.loads((result.run_dir / "report.json").read_text())
    first, last = report["held_out_first"], report["held_out_last"]
    assert last["eval_reward_accuracy"] >= 0.9, last
    assert last["eval_loss"] < first["eval_loss"]
    by_margin = report["accuracy_by_margin"]
    assert set(by_margin) == {"1", "3"}
    assert sum(v["pairs"] for v in by_margin.values()) == 64
    markdown = (result.run_dir / "report.md").read_text()
    assert "| margin | accuracy | pairs |" in markdown
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    assert {"reward_accuracy", "reward_margin"} <= set(next(r for r in records if "loss" in r))

    # The saved dir is a transformers sequence classifier; `chuan rm score` reads it.
    from transformers import AutoModelForSequenceClassification

    loaded = AutoModelForSequenceClassification.from_pretrained(result.model_dir)
    assert type(loaded).__name__ == "BaichuanForSequenceClassification"
    scores = tmp_path / "scores.jsonl"
    summary = score_file(result.model_dir, pairs, scores, max_length=96)
    assert summary["kind"] == "pairs"
    assert summary["scored"] + summary["dropped_too_long"] == 1000
    assert summary["accuracy"] >= 0.9
    first_line = json.loads(scores.open().readline())
    assert set(first_line) == {"origin", "chosen", "rejected", "margin"}
    ids = torch.tensor([[195, 400, 401, 196, 402, 2]])
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids).logits,
            load_reward_model(result.model_dir)(input_ids=ids).logits,
        )
    # The real hh-rlhf demos: scored and reported (a translation model has no view on them).
    hh = test_data / "preference" / "hh_rlhf_harmless_base_test_100.jsonl.gz"
    summary = score_file(result.model_dir, hh, tmp_path / "hh.jsonl", max_length=96)
    assert summary["scored"] + summary["dropped_too_long"] == 99
    assert summary["rejected"] == 1 and 0 <= summary["accuracy"] <= 1
    rejects = (tmp_path / "hh.rejects.jsonl").read_text().splitlines()
    assert json.loads(rejects[0])["line"] == 87


@pytest.mark.interop
def test_lora_reward_model_is_merged_with_its_head(tmp_path, base_dir, pairs):
    config = _config(
        tmp_path / "run",
        base_dir,
        pairs,
        finetune="lora",
        lora={"r": 4, "alpha": 8, "dropout": 0.0, "targets": ["all-linear"]},
        optim={"lr": 3e-3},
        eval={"holdout": 0},
        stages=[{"data": [{"path": str(pairs)}], "steps": 3}],
    )
    trainer = RewardTrainer(from_dict(RMConfig, config), init_world("cpu", None))
    try:
        result = trainer.run(None)
        ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            trained = trainer.model.eval()(input_ids=ids).logits
            merged = load_reward_model(result.model_dir)(input_ids=ids).logits
            fresh = load_reward_model(base_dir)(input_ids=ids).logits
        torch.testing.assert_close(merged, trained, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(merged, fresh, atol=1e-3)  # the head and adapter trained
        assert (result.run_dir / "adapter" / "adapter_config.json").is_file()
    finally:
        close_world(trainer.world)


def test_scoring_chat_data_and_refusing_a_plain_model(tmp_path, base_dir):
    with pytest.raises(InputError, match="not a reward model"):
        score_file(base_dir, TRANSLATIONS, tmp_path / "x.jsonl")
    torch.manual_seed(0)
    reward_dir = tmp_path / "rm"
    load_reward_model(base_dir).save_pretrained(reward_dir)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (base_dir / name).is_file():
            (reward_dir / name).write_bytes((base_dir / name).read_bytes())
    out = tmp_path / "scores.jsonl"
    summary = score_file(reward_dir, TRANSLATIONS, out, max_length=96)
    assert summary["kind"] == "conversations"
    assert summary["scored"] + summary["dropped_too_long"] == 1000
    assert set(json.loads(out.open().readline())) == {"origin", "score"}
    with pytest.raises(InputError, match="--overwrite"):
        score_file(reward_dir, TRANSLATIONS, out)
    with pytest.raises(InputError, match="is a reward model"):
        load_model(reward_dir)


def test_config_checks_and_the_tiny_recipe(tmp_path, base_dir, pairs):
    with pytest.raises(ConfigError, match="qlora"):
        from_dict(RMConfig, _config(tmp_path, base_dir, pairs, finetune="qlora"))
    with pytest.raises(ConfigError, match="packing"):
        from_dict(RMConfig, _config(tmp_path, base_dir, pairs, packing=True))
    cfg = load_rm_config(ROOT / "configs" / "rm-tiny-cpu.yaml")
    assert cfg.model == "runs/tiny/sft/model" and cfg.center_rewards == 0.01
    assert all((ROOT / s.path).is_file() for stage in cfg.stages for s in stage.data)


def test_two_ranks_give_the_single_process_loss(tmp_path, base_dir, pairs):
    """8 pairs in one process and two torchrun ranks (gloo) x 4: the same global batch, so the
    same loss at every step and the same held-out numbers."""
    steps = {"stages": [{"data": [{"path": str(pairs)}], "steps": 3}], "eval": {"holdout": 16}}
    single = rm(from_dict(RMConfig, _config(tmp_path / "single", base_dir, pairs, **steps)))
    config = _config(tmp_path / "ranks", base_dir, pairs, micro_batch_size=4, **steps)
    finish(chuan_process("rm train", write_config(tmp_path / "ranks.yaml", config), nproc=2))
    reports = [
        json.loads((run / "report.json").read_text())
        for run in (single.run_dir, tmp_path / "ranks")
    ]
    assert reports[1]["world_size"] == 2
    assert reports[0]["final_loss"] == pytest.approx(reports[1]["final_loss"], abs=1e-5)
    assert reports[0]["held_out_last"]["eval_reward_accuracy"] == pytest.approx(
        reports[1]["held_out_last"]["eval_reward_accuracy"]
    )
