"""`torchrun` with two CPU processes (gloo): DDP and FSDP2 follow the single-process run.

The global batch is the same (2 ranks x 2 rows against 1 process x 4 rows), so every step's
loss must agree to rounding, and a sharded checkpoint must continue in one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from chuan.train.checkpoint import list_checkpoints, read_trainer_state
from helpers.pretrain_fixtures import bible_corpus, pretrain_config, write_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
STEPS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, test_data) -> dict[str, Path]:
    return bible_corpus(tmp_path_factory.mktemp("bible"), test_data, verses=1500, max_length=64)


def _config(root: Path, corpus: dict, **fields) -> Path:
    config = pretrain_config(
        root / "run",
        corpus["packed"],
        corpus["tokenizer"],
        checkpoint={"every": 3, "keep": 3},
        stages=[{"data": [str(corpus["packed"])], "steps": STEPS}],
        **fields,
    )
    return write_config(root / "config.yaml", config)


def _chuan(config: Path, *extra: str, nproc: int = 1) -> None:
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        if nproc > 1
        else [sys.executable]
    )
    cmd = [*launcher, "-m", "chuan.cli", "pretrain", "--config", str(config), *extra]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _losses(run: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run / "metrics.jsonl").open() if '"loss"' in x]


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus) -> Path:
    root = tmp_path_factory.mktemp("single")
    _chuan(_config(root, corpus))
    return root / "run"


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_ranks_follow_the_single_process_run(tmp_path, corpus, single, strategy):
    config = _config(tmp_path, corpus, micro_batch_size=2, distributed={"strategy": strategy})
    _chuan(config, nproc=2)
    run = tmp_path / "run"
    expected, got = _losses(single), _losses(run)
    assert len(got) == STEPS
    assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < 1e-4, (expected, got)
    report = json.loads((run / "report.json").read_text())
    assert (report["world_size"], report["strategy"]) == (2, strategy)
    # the gathered model dir is whole and close to the single-process weights
    ref, dist = (
        load_file(single / "model" / "model.safetensors"),
        load_file(run / "model" / "model.safetensors"),
    )
    assert ref.keys() == dist.keys()
    for name in ref:
        torch.testing.assert_close(dist[name], ref[name], atol=1e-4, rtol=1e-3)


def test_fsdp_checkpoint_continues_in_one_process(tmp_path, corpus, single):
    sharded = tmp_path / "sharded"
    _chuan(_config(sharded, corpus, micro_batch_size=2), nproc=2)
    first = list_checkpoints(sharded / "run")[0]
    assert read_trainer_state(first).step == 3 and read_trainer_state(first).world_size == 2
    assert len(list((first / "train_state").glob("*.distcp"))) == 2  # one shard file per rank
    alone = tmp_path / "alone"
    _chuan(_config(alone, corpus), "--resume", str(first))
    got, expected = _losses(alone / "run"), _losses(single)
    assert len(got) == STEPS - 3
    assert max(abs(a - b) for a, b in zip(expected[3:], got, strict=True)) < 1e-4
