"""The pretraining loop end to end on real text: learning, exact resume, signals, faults, freezing.

Runs that must be killed go through the `chuan` command in a subprocess, exactly as a user
would run them; the others call `chuan.train.loop.pretrain` in process.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from chuan.config import from_dict
from chuan.model.checkpoint import read_state_dict
from chuan.train import loop
from chuan.train.checkpoint import latest_checkpoint, list_checkpoints, read_trainer_state
from chuan.train.config import PretrainConfig
from chuan.train.distributed import World
from helpers.pretrain_fixtures import bible_corpus, pretrain_config, write_config

HOLDOUT = 32
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data) -> dict[str, Path]:
    """A tokenizer trained on 6,000 bilingual verses and the verses packed into 128-token rows."""
    return bible_corpus(tmp_path_factory.mktemp("bible"), test_data, verses=6000, max_length=128)


def _config(tmp: Path, corpus: dict, **fields) -> dict:
    return pretrain_config(tmp / "run", corpus["packed"], corpus["tokenizer"], **fields)


def _run(config: dict, resume: str | None = None) -> loop.PretrainResult:
    return loop.pretrain(from_dict(PretrainConfig, config), resume=resume)


def _cli(config_path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chuan.cli", "pretrain", "--config", str(config_path), *extra],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def unigram_entropy(packed: Path, skip_last: int) -> float:
    """Entropy (nats) of the training tokens' unigram distribution: what a model that ignores
    context can reach at best."""
    data = load_from_disk(str(packed))
    ids = np.array(data["input_ids"][: len(data) - skip_last])
    segments = np.array(data["segment_ids"][: len(data) - skip_last])
    counts = collections.Counter(ids[segments != 0].tolist())
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values())


def test_tiny_model_learns_well_below_unigram_entropy(tmp_path, corpus):
    config = _config(
        tmp_path,
        corpus,
        micro_batch_size=8,
        eval={"holdout_rows": HOLDOUT},
        checkpoint={"every": 1000},
        stages=[{"data": [str(corpus["packed"])], "steps": 200}],
    )
    result = _run(config)
    entropy = unigram_entropy(corpus["packed"], HOLDOUT)
    assert result.eval_loss < entropy - 1.0, (result.eval_loss, entropy)
    report = json.loads((result.run_dir / "report.json").read_text())
    assert report["final_loss"] < report["first_loss"] - 2.0
    assert (result.run_dir / "loss.png").stat().st_size > 0
    assert (result.model_dir / "tokenizer.model").is_file()
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    assert records[0] == {"step": 0, "eval_loss": report["first_eval_loss"]}  # before training
    assert {"loss", "lr", "grad_norm", "max_logit", "tokens_per_s", "mfu"} <= set(records[1])
    assert any("eval_loss" in r for r in records[1:])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, corpus) -> Path:
    """An uninterrupted 16-step run; the resume tests must end on its exact weights."""
    root = tmp_path_factory.mktemp("reference")
    config = write_config(root / "config.yaml", _config(root, corpus))
    proc = _cli(config)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return root / "run"


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.05)


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").open() if '"loss"' in x]


def _steps_logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    if not metrics.is_file():
        return 0
    return sum(1 for line in metrics.open() if '"loss"' in line)


def test_sigkill_then_resume_auto_is_bit_identical(tmp_path, corpus, reference_run):
    kill_after = random.Random().randrange(5, 15)
    config = write_config(tmp_path / "config.yaml", _config(tmp_path, corpus))
    run = tmp_path / "run"
    proc = _cli(config)
    _wait_for(lambda: _steps_logged(run) >= kill_after, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest_checkpoint(run) is not None, f"killed after step {kill_after}: no checkpoint"
    resumed = _cli(config, "--resume", "auto")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    expected, got = _weights(reference_run / "model"), _weights(run / "model")
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.equal(expected[name], got[name]), f"{name} differs (killed at {kill_after})"
    assert _losses(run) == _losses(reference_run), "metrics.jsonl must hold each step once"


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, corpus, reference_run):
    config = write_config(
        tmp_path / "config.yaml", _config(tmp_path, corpus, checkpoint={"every": 1000})
    )
    run = tmp_path / "run"
    proc = _cli(config)
    _wait_for(lambda: _steps_logged(run) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out  # 143: stopped, not finished
    assert "--resume auto" in out
    (checkpoint,) = list_checkpoints(run)
    state = read_trainer_state(checkpoint)
    assert 3 <= state.step < 16 and state.samples == state.step * 4
    assert json.loads((run / "report.json").read_text())["status"] == "interrupted"
    # the checkpoint's model part is a complete model dir on its own
    assert read_state_dict(checkpoint / "model").keys() == _weights(reference_run / "model").keys()
    resumed = _cli(config, "--resume", "auto")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    expected, got = _weights(reference_run / "model"), _weights(run / "model")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_a_run_dir_with_checkpoints_needs_resume(tmp_path, corpus, reference_run):
    config = {**_config(tmp_path, corpus), "out": str(reference_run)}
    with pytest.raises(FileExistsError, match="--resume auto"):
        _run(config)


def _poison(monkeypatch, bad_calls: set[int]) -> None:
    """Make the loss of the given micro-batch calls NaN (counting from 0)."""
    forward, calls = loop._forward, iter(range(10**6))

    def poisoned(model, batch, autocast):
        out = forward(model, batch, autocast)
        if next(calls) in bad_calls:
            out.loss = out.loss * float("nan")
            out.ce_loss = out.ce_loss * float("nan")
        return out

    monkeypatch.setattr(loop, "_forward", poisoned)


def test_non_finite_steps_are_skipped_and_logged(tmp_path, corpus, monkeypatch):
    _poison(monkeypatch, {3, 4})
    config = _config(tmp_path, corpus, stages=[{"data": [str(corpus["packed"])], "steps": 8}])
    result = _run(config)
    records = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").open()]
    skipped = [r["step"] for r in records if r.get("skipped")]
    assert skipped == [4, 5]
    assert json.loads((result.run_dir / "report.json").read_text())["skipped_steps"] == 2
    assert math.isfinite(result.final_loss)
    weights = _weights(result.model_dir)
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_too_many_bad_steps_stop_with_the_last_checkpoint_intact(tmp_path, corpus, monkeypatch):
    _poison(monkeypatch, set(range(5, 100)))
    config = _config(tmp_path, corpus, max_bad_steps=3)
    with pytest.raises(loop.TrainingDiverged, match="3 steps in a row"):
        _run(config)
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert read_trainer_state(checkpoint).step == 4
    weights = read_state_dict(checkpoint / "model")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_freeze_non_embeddings_changes_only_embedding_and_head(tmp_path, corpus):
    first = _config(tmp_path / "a", corpus, stages=[{"data": [str(corpus["packed"])], "steps": 3}])
    start = _run(first).model_dir
    frozen = _config(
        tmp_path / "b",
        corpus,
        preset=None,
        model=str(start),
        stages=[{"data": [str(corpus["packed"])], "steps": 3, "freeze": "non_embeddings"}],
    )
    before, after = read_state_dict(start), read_state_dict(_run(frozen).model_dir)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed == {"model.embed_tokens.weight", "lm_head.weight"}


def test_activation_checkpointing_recomputes_without_changing_the_result(tmp_path, corpus):
    losses = {}
    for enabled in (False, True):
        config = _config(
            tmp_path / str(enabled),
            corpus,
            activation_checkpointing=enabled,
            stages=[{"data": [str(corpus["packed"])], "steps": 3}],
        )
        trainer = loop.Trainer(
            from_dict(PretrainConfig, config), World(0, 1, 0, torch.device("cpu"))
        )
        assert trainer.model.model.gradient_checkpointing is enabled
        trainer.run(None)
        losses[enabled] = _losses(tmp_path / str(enabled) / "run")
    assert losses[True] == pytest.approx(losses[False], abs=1e-6)
