"""Where a corpus stage's per-shard work runs: this machine's processes, or a Ray cluster.

Every stage is a function over one shard that writes temporary files, renames them and writes
its `.done` marker last (`chuan.data.shards`), so running it again after a crash, or twice at
once on two machines, leaves the same output. That is all an executor needs: `map` calls the
function on every item and returns the results in item order.

- `LocalExecutor` runs items in this process (`workers` 1) or in a process pool.
- `RayExecutor` sends one Ray task per item (`ray.remote(max_retries=...)`, with
  `retry_exceptions`, so a task that fails is retried like one whose worker died) to a running
  cluster (`address`: `auto`, `HOST:PORT` or `ray://...`) or to a local Ray started for the
  run. Ray core tasks, not Ray Data: a stage is a map over files, and Ray Data's shuffles
  reserve CPUs for aggregators and have hung on one-node clusters (ray-project/ray#48224).
  Every node must see the inputs and the output dir at the same paths (a shared filesystem):
  `preflight` runs one task per node that checks this, and names the node and path if not.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from chuan.errors import DependencyError, InputError

# Counts the documents a task's result covers (for a docs/s rate), or None.
Docs = Callable[[Any], int] | None


class Executor(Protocol):
    workers: int

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, docs: Docs = None
    ) -> list[Any]:
        """`[fn(item) for item in items]`, possibly in parallel; results in item order. The
        progress bar counts tasks, and documents per second when `docs(result)` counts them."""

    def preflight(self, inputs: Sequence[Path], out: Path | None) -> None:
        """Refuse with a clear error when a worker cannot read `inputs` or write under `out`
        (None: the tasks write nothing)."""


class _Progress:
    """Tasks done of total, with documents per second when the results count them."""

    def __init__(self, total: int, desc: str, enabled: bool, docs: Docs):
        self.bar = tqdm(total=total, desc=desc, unit="task", disable=not enabled or total == 0)
        self.docs = docs
        self.seen = 0

    def done(self, result: Any) -> None:
        self.bar.update()
        if self.docs is not None:
            self.seen += self.docs(result)
            elapsed = self.bar.format_dict["elapsed"] or 1e-9
            self.bar.set_postfix_str(f"{self.seen / elapsed:,.0f} docs/s", refresh=False)

    def close(self) -> None:
        self.bar.close()


class LocalExecutor:
    def __init__(self, workers: int = 1, progress: bool = True):
        self.workers = max(1, workers)
        self.progress = progress

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, docs: Docs = None
    ) -> list[Any]:
        progress = _Progress(len(items), desc, self.progress, docs)
        results: list[Any] = [None] * len(items)
        if self.workers == 1 or len(items) <= 1:
            for i, item in enumerate(items):
                results[i] = fn(item)
                progress.done(results[i])
        else:
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
                futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    progress.done(results[futures[future]])
        progress.close()
        return results

    def preflight(self, inputs: Sequence[Path], out: Path | None) -> None:
        """Nothing to check: this machine reads and writes everything itself."""


class RayExecutor:
    def __init__(self, address: str | None, max_retries: int = 3, progress: bool = True):
        try:
            import ray
        except ImportError:
            raise DependencyError("--executor ray needs Ray: pip install 'chuan[ray]'") from None
        self.ray = ray
        dashboard = None
        if not ray.is_initialized():
            context = ray.init(address=address, log_to_driver=False, configure_logging=False)
            dashboard = context.dashboard_url
        self.max_retries = max_retries
        self.progress = progress
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if progress:
            where = f", dashboard http://{dashboard}" if dashboard else ""
            print(f"ray: {self.workers} CPUs on {len(self._nodes())} node(s){where}",
                  file=sys.stderr)  # fmt: skip

    def _nodes(self) -> list[dict]:
        return [n for n in self.ray.nodes() if n.get("Alive")]

    def map(
        self, fn: Callable[[Any], Any], items: Sequence[Any], desc: str, docs: Docs = None
    ) -> list[Any]:
        ray = self.ray
        task = ray.remote(max_retries=self.max_retries, retry_exceptions=True)(_call)
        pending = {task.remote(fn, item): i for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        progress = _Progress(len(items), desc, self.progress, docs)
        waiting = list(pending)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            for ref in ready:
                results[pending[ref]] = ray.get(ref)
                progress.done(results[pending[ref]])
        progress.close()
        return results

    def preflight(self, inputs: Sequence[Path], out: Path | None) -> None:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        check = ray.remote(num_cpus=0)(_check_paths)
        refs = {
            node["NodeManagerAddress"]: check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote([str(p) for p in inputs], None if out is None else str(out))
            for node in self._nodes()
        }
        problems = [
            f"node {address}: {problem}"
            for address, ref in refs.items()
            for problem in ray.get(ref)
        ]
        if problems:
            raise InputError(
                "every Ray node must see the inputs and the output dir at the same paths (a "
                "shared filesystem such as NFS, or a mounted object store): "
                + "; ".join(problems[:6])
            )


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def _check_paths(inputs: list[str], out: str | None) -> list[str]:
    """Problems this node has with the run's paths: unreadable inputs, an unwritable `out`."""
    problems = [f"cannot read {p}" for p in inputs if not os.access(p, os.R_OK)]
    if out is None:
        return problems
    probe = Path(out) / f".probe-{uuid.uuid4().hex}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as error:
        problems.append(f"cannot write under {out} ({error.strerror})")
    return problems
