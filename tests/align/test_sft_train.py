"""`chuan sft` end to end on real data (the bundled Tatoeba translations) and a tiny model
pretrained on Bible verses: learning, LoRA, exact resume after SIGKILL, ranks and accumulation.

Runs that must be killed or launched with torchrun go through the `chuan` command in a
subprocess, as a user would run them; the others run in process.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.align.sft import SFTTrainer, sft
from chuan.align.sft_config import SFTConfig
from chuan.config import from_dict
from chuan.infer.loading import load_model
from chuan.train.checkpoint import latest_checkpoint
from chuan.train.distributed import close_world, init_world
from helpers.cli_runs import chuan_process, finish, kill_after
from helpers.pretrain_fixtures import write_config
from helpers.sft_fixtures import TRANSLATIONS, sft_config


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").open() if '"loss"' in x]


# --- learning -------------------------------------------------------------------------------


def _chrf(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_chrf(hypotheses, [references]).score


def test_fine_tuning_teaches_the_translation_task(tmp_path, base_dir):
    config = sft_config(
        tmp_path / "run",
        base_dir,
        finetune="full",
        optim={"lr": 2e-3},
        eval={"holdout": 48},
        samples={"prompts": 24, "max_new_tokens": 40},
        stages=[{"data": [{"path": str(TRANSLATIONS)}], "steps": 60}],
    )
    result = sft(from_dict(SFTConfig, config))
    report = json.loads((result.run_dir / "report.json").read_text())
    before, after = report["first_eval_loss"], report["eval_loss"]
    assert after < 0.7 * before, (before, after)  # held-out answer loss falls clearly
    replies = report["replies"]
    assert len(replies) == 24
    # Greedy replies end with EOS instead of running to the limit.
    assert sum(r["after_ended"] for r in replies) >= 18
    assert sum(r["before_ended"] for r in replies) <= 4
    references = [r["reference"] for r in replies]
    chrf_before = _chrf([r["before"] for r in replies], references)
    chrf_after = _chrf([r["after"] for r in replies], references)
    assert chrf_after > chrf_before + 2, (chrf_before, chrf_after)
    assert report["data"]["rejected"] == 0 and report["data"]["samples"] > 900
    assert (result.run_dir / "rejects.jsonl").read_text() == ""
    # The template is in the output's tokenizer files, for chat and serve.
    tokenizer_config = json.loads((result.model_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chuan_chat_template"] == "baichuan2"


# --- LoRA -----------------------------------------------------------------------------------


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.interop
def test_lora_trains_only_the_adapter_and_merges_exactly(tmp_path, base_dir):
    from peft import PeftModel

    cfg = from_dict(SFTConfig, sft_config(tmp_path / "run", base_dir, finetune="lora"))
    base = load_model(base_dir, device="cpu", dtype="fp32")
    ids = torch.randint(
        3, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0)
    )
    world = init_world("cpu", None)
    try:
        trainer = SFTTrainer(cfg, world)
        wrapped = trainer.model
        wrapped.eval()
        torch.testing.assert_close(_logits(wrapped, ids), _logits(base, ids), atol=0, rtol=0)
        wrapped.train()
        trainer.run(None)
    finally:
        close_world(world)
    trained = dict(wrapped.named_parameters())
    original = dict(base.named_parameters())
    for name, param in trained.items():
        if "lora_" in name:
            assert param.requires_grad
        else:
            assert not param.requires_grad
            key = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(param, original[key]), f"{name} changed"
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trained.items())
    # The adapter saved and loaded back gives the trained model's logits, and the merged
    # model dir gives the adapter model's logits.
    wrapped.eval()
    in_memory = _logits(wrapped, ids)
    loaded = PeftModel.from_pretrained(
        load_model(base_dir, device="cpu", dtype="fp32"), str(tmp_path / "run" / "adapter")
    ).eval()
    torch.testing.assert_close(_logits(loaded, ids), in_memory, atol=1e-6, rtol=0)
    merged = load_model(tmp_path / "run" / "model", device="cpu", dtype="fp32")
    torch.testing.assert_close(_logits(merged, ids), in_memory, atol=1e-5, rtol=0)
    assert not torch.allclose(in_memory, _logits(base, ids), atol=1e-3)
    # The checkpoint's training state holds the adapter only (the base is re-read on resume).
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["trainable_parameters"] == sum(
        p.numel() for n, p in trained.items() if "lora_" in n
    )


# --- resume ---------------------------------------------------------------------------------


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_sigkill_then_resume_auto_is_bit_identical(tmp_path, base_dir, finetune):
    reference = write_config(
        tmp_path / "reference.yaml", sft_config(tmp_path / "reference", base_dir, finetune=finetune)
    )
    finish(chuan_process("sft", reference))
    steps = random.Random().randrange(5, 12)
    config = write_config(
        tmp_path / "run.yaml", sft_config(tmp_path / "run", base_dir, finetune=finetune)
    )
    kill_after(chuan_process("sft", config), tmp_path / "run", steps)
    assert latest_checkpoint(tmp_path / "run") is not None
    finish(chuan_process("sft", config, "--resume", "auto"))
    outputs = ["model"] + (["adapter"] if finetune == "lora" else [])
    for name in outputs:
        weights = "adapter_model.safetensors" if name == "adapter" else "model.safetensors"
        expected = load_file(tmp_path / "reference" / name / weights)
        got = load_file(tmp_path / "run" / name / weights)
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}/{key} (killed at {steps})"
    assert _losses(tmp_path / "run") == _losses(tmp_path / "reference")


# --- the global batch -----------------------------------------------------------------------


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_accumulation_and_two_ranks_give_the_single_process_loss(tmp_path, base_dir, finetune):
    """One process x 8 rows, one process x 4 rows x 2 accumulation steps, and two torchrun
    ranks (gloo) x 4 rows: the same global batch, so the same loss at every step."""
    runs = {
        "single": ({}, 1),
        "accumulated": ({"micro_batch_size": 4, "grad_accum": 2}, 1),
        "ranks": ({"micro_batch_size": 4}, 2),
    }
    for name, (fields, nproc) in runs.items():
        fields = {**fields, "finetune": finetune, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
        config = write_config(
            tmp_path / f"{name}.yaml",
            sft_config(
                tmp_path / name,
                base_dir,
                **{**fields, "stages": [{"data": [{"path": str(TRANSLATIONS)}], "steps": 6}]},
            ),
        )
        finish(chuan_process("sft", config, nproc=nproc))
    single = _losses(tmp_path / "single")
    assert len(single) == 6
    for name in ("accumulated", "ranks"):
        got = _losses(tmp_path / name)
        assert max(abs(a - b) for a, b in zip(single, got, strict=True)) < 1e-4, (name, got)
    report = json.loads((tmp_path / "ranks" / "report.json").read_text())
    assert report["world_size"] == 2
