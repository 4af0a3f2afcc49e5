"""`chuan dpo` on real text with a learnable preference: translation prompts from the bundled
Tatoeba set, the right translation chosen over a copy of the untranslated input. Learning, the
reference (precomputed, on the fly, adapter off), the global-batch mean, exact resume; and
KTO on the same answers unpaired (the translation desirable, the copy undesirable)."""

from __future__ import annotations

import json
import logging
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from chuan.align.adapters import reference_model
from chuan.align.dpo import DPOTrainer, KTOTrainer, dpo
from chuan.align.dpo_config import DPOConfig
from chuan.align.pair_data import PairRows
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


def _trainer(cfg: dict, trainer=DPOTrainer):
    return trainer(from_dict(DPOConfig, cfg), init_world("cpu", None))


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
        with torch.no_grad(), reference_model(trainer.model, trainer.reference) as reference:
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


# -- KTO -------------------------------------------------------------------------------------


def _unpaired(path: Path, pairs: Path, desirable_per_undesirable: int) -> Path:
    """The pairs as LLaMA-Factory KTO records: for every pair its translation (desirable),
    and for every `desirable_per_undesirable`-th pair its copy (undesirable) too."""
    with path.open("w", encoding="utf-8") as out:
        for i, line in enumerate(pairs.read_text(encoding="utf-8").splitlines()):
            pair = json.loads(line)
            prompt = {"role": "user", "content": f"{pair['instruction']}\n{pair['input']}"}
            answers = [(pair["chosen"], True)]
            if i % desirable_per_undesirable == 0:
                answers.append((pair["rejected"], False))
            for answer, label in answers:
                messages = [prompt, {"role": "assistant", "content": answer}]
                out.write(json.dumps({"messages": messages, "label": label}) + "\n")
    return path


def test_kto_raises_held_out_desirable_reward_above_undesirable(tmp_path, base_dir, pairs):
    """Paired data under `loss: kto` trains as its answers unpaired; at step 0 the policy is
    the reference (every reward 0, every loss 1 − σ(0) = 0.5), after it the translations'
    rewards rise above the copies'."""
    config = _config(
        tmp_path / "run",
        base_dir,
        pairs,
        loss="kto",
        precompute_reference=True,
        stages=[{"data": [{"path": str(pairs)}], "steps": 30}],
    )
    result = dpo(from_dict(DPOConfig, config))
    report = json.loads((result.run_dir / "report.json").read_text())
    first, last = report["held_out_first"], report["held_out_last"]
    assert first["eval_loss"] == pytest.approx(0.5, abs=1e-5)
    for key in ("eval_reward_desirable", "eval_reward_undesirable", "eval_kl"):
        assert first[key] == pytest.approx(0, abs=1e-5), key
    assert 0.3 < first["eval_desirable_fraction"] < 0.7  # 40 of 2,000 balanced answers
    assert last["eval_reward_desirable"] > 0 > last["eval_reward_undesirable"], last
    assert last["eval_reward_margin"] > 1.0, last
    assert last["eval_reward_accuracy"] >= 0.9, last
    assert last["eval_loss"] < 0.6 * first["eval_loss"]
    assert report["loss"] == "kto"
    assert report["weighted_balance"][0] == pytest.approx(1, abs=0.02)  # as many of each
    read = report["data"]["read"]
    assert list(read.values()) == [2 * 1000]  # every pair read as two answers
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    trained = [r for r in records if "loss" in r]
    assert {"reward_desirable", "reward_undesirable", "reward_accuracy", "kl"} <= set(trained[0])
    assert "held-out reward of desirable answers" in (result.run_dir / "report.md").read_text()


@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_kto_precomputed_reference_equals_on_the_fly_bit_for_bit(
    tmp_path, base_dir, pairs, finetune
):
    """Both rows of a KTO sample (its answer, its KL row) are scored as a pair's are."""
    config = _config(tmp_path / "run", base_dir, pairs, finetune=finetune, loss="kto")
    trainer = _trainer(config, KTOTrainer)
    try:
        rows = trainer.plans[0].rows
        stored = rows.with_reference(trainer._score_reference(trainer.model, rows))
        order = random.Random(0).sample(range(len(rows)), 16)
        batch = stored.rows_batch(order)
        got = trainer._reference_logps(trainer.model, rows, order)
        assert torch.equal(got.cpu(), batch.reference)
        assert batch.desirable.dtype == torch.bool and 0 < batch.desirable.sum() < 16
        losses, numbers = trainer.pair_losses(trainer.model, batch, stored)
        assert losses.shape == (16,) and numbers["desirable_fraction"] == batch.desirable.sum()
    finally:
        close_world(trainer.world)


def test_kto_rows_are_each_answer_then_the_previous_answer_after_the_same_prompt(
    tmp_path, base_dir, pairs
):
    """The KL row of sample i is its prompt with sample i − 1's answer (TRL's rotation)."""
    trainer = _trainer(_config(tmp_path / "run", base_dir, pairs, loss="kto"), KTOTrainer)
    try:
        data = trainer.eval_rows.data[:]
        rows = zip(*(data[c] for c in PairRows.COLUMNS[:4]), strict=True)
        answers, kl_answers = [], []
        for ids, labels, kl_ids, kl_labels in rows:
            start = int(np.argmax(labels >= 0))  # the first answer token
            assert list(kl_ids[:start]) == list(ids[:start]) and kl_labels[start] >= 0
            answers.append(list(ids[labels >= 0]))
            kl_answers.append(list(kl_ids[kl_labels >= 0]))
        assert kl_answers == answers[-1:] + answers[:-1]
        assert data["desirable"].dtype == bool and 0 < data["desirable"].sum() < len(answers)
    finally:
        close_world(trainer.world)


def test_kto_warns_when_the_weighted_balance_is_outside_trls_range(
    tmp_path, base_dir, pairs, caplog
):
    """3 desirable answers to 1 undesirable: w_d·n_d / (w_u·n_u) = 3, outside [1, 4/3];
    desirable_weight 1/3 to 4/9 would be inside, and is."""
    data = _unpaired(tmp_path / "kto.jsonl", pairs, 3)
    fields = {"loss": "kto", "stages": [{"data": [{"path": str(data)}], "steps": 1}]}
    with caplog.at_level(logging.WARNING, logger="chuan.align.dpo"):
        trainer = _trainer(_config(tmp_path / "a", base_dir, data, **fields), KTOTrainer)
        close_world(trainer.world)
    (ratio,) = trainer.balance
    assert ratio == pytest.approx(3, rel=0.02)
    assert "outside the advised 1 to 1.33 (desirable_weight 0.33" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="chuan.align.dpo"):
        config = _config(tmp_path / "b", base_dir, data, desirable_weight=0.4, **fields)
        trainer = _trainer(config, KTOTrainer)
        close_world(trainer.world)
    assert 1 <= trainer.balance[0] <= 4 / 3 and "outside" not in caplog.text


def test_kto_settings_are_checked(tmp_path, base_dir, pairs):
    with pytest.raises(ConfigError, match="loss: kto only"):
        from_dict(DPOConfig, _config(tmp_path, base_dir, pairs, desirable_weight=2.0))
    with pytest.raises(ConfigError, match="sft_weight"):
        from_dict(DPOConfig, _config(tmp_path, base_dir, pairs, loss="kto", sft_weight=0.1))


def test_kto_inspect_shows_each_answer_with_its_label_and_kl_row(tmp_path, base_dir, pairs, capsys):
    data = _unpaired(tmp_path / "kto.jsonl", pairs, 1)
    config = tmp_path / "kto.json"
    fields = {"loss": "kto", "stages": [{"data": [{"path": str(data)}], "steps": 1}]}
    config.write_text(json.dumps(_config(tmp_path / "run", base_dir, data, **fields)), "utf-8")
    main(["dpo", "--config", str(config), "--inspect", "4"])
    out = capsys.readouterr().out
    assert out.count("KL row (another sample's answer):") == 4
    assert sum(line in ("desirable:", "undesirable:") for line in out.splitlines()) == 4
    assert "rejected" not in out


def test_kto_two_ranks_give_the_single_process_loss(tmp_path, base_dir, pairs):
    """The KL estimate z0 is averaged over the ranks, so 8 samples in one process and 2 ranks
    x 4 give the same step; so do LLaMA-Factory records read by `chuan dpo` itself."""
    data = _unpaired(tmp_path / "kto.jsonl", pairs, 1)
    losses = {}
    for name, fields in {"single": {}, "ranks": {"micro_batch_size": 4}}.items():
        fields |= {"loss": "kto", "stages": [{"data": [{"path": str(data)}], "steps": 3}]}
        config = write_config(
            tmp_path / f"{name}.yaml", _config(tmp_path / name, base_dir, data, **fields)
        )
        finish(chuan_process("dpo", config, nproc=1 if name == "single" else 2))
        metrics = (tmp_path / name / "metrics.jsonl").open()
        losses[name] = [json.loads(x)["loss"] for x in metrics if '"loss"' in x]
    assert len(losses["single"]) == 3
    diffs = [abs(a - b) for a, b in zip(losses["single"], losses["ranks"], strict=True)]
    assert max(diffs) < 1e-5, losses
