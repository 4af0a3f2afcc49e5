"""Post-training runs through the `chuan` command, for what must happen in a process of its
own: a SIGKILL mid-run, or torchrun ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def chuan_process(verb: str, config: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    """`chuan VERB --config CONFIG ...` (VERB may be two words: "rm train"), under torchrun
    (gloo) when `nproc` > 1."""
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.Popen(
        [*launcher, "-m", "chuan.cli", *verb.split(), "--config", str(config), *extra],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    """Wait for a run; its output, which a failure shows."""
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


def steps_logged(run: Path) -> int:
    metrics = run / "metrics.jsonl"
    return sum('"loss"' in line for line in metrics.open()) if metrics.is_file() else 0


def kill_after(proc: subprocess.Popen, run: Path, steps: int, timeout: float = 120) -> None:
    """SIGKILL the run once `steps` training steps are in its metrics."""
    deadline = time.monotonic() + timeout
    while steps_logged(run) < steps:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
