"""The Ray executor against the local one: `chuan data clean` and `dedup` wall time on the
same corpus, with 1 and 2 workers each.

The corpus is bench_dedup.py's (real zh/en sentences, 20% planted near-duplicates) over
`--shards` files. Each run is its own subprocess; a Ray run starts its local Ray (`num_cpus`
= the workers) before the clock starts, as a user's cluster would already be running, and
the start-up time is reported beside it.

    pip install -e ".[ray]"
    python benchmarks/bench_ray.py [--docs 40000] [--shards 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def child(args) -> None:
    """One executor, one worker count: time clean then dedup; print the result as JSON."""
    from chuan.data.clean import CleanConfig, clean_corpus
    from chuan.data.dedup import dedup_corpus
    from chuan.data.executor import LocalExecutor, RayExecutor

    start = time.perf_counter()
    if args.child == "ray":
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        executor = RayExecutor(None, progress=False)
    else:
        executor = LocalExecutor(args.workers, progress=False)
    startup = time.perf_counter() - start
    out = Path(args.scratch) / f"{args.child}-{args.workers}"
    times = {}
    start = time.perf_counter()
    clean_corpus(args.data, out / "clean", config=CleanConfig(), executor=executor,
                 progress=False)  # fmt: skip
    times["clean"] = time.perf_counter() - start
    start = time.perf_counter()
    report = dedup_corpus(out / "clean" / "shards", out / "dedup", executor=executor,
                          sentence_max_repeats=0, progress=False)  # fmt: skip
    times["dedup"] = time.perf_counter() - start
    result = {"executor": args.child, "workers": args.workers, "startup": startup, **times,
              "kept": report["kept"]}  # fmt: skip
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=40_000)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=["local", "ray"], help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    from bench_dedup import build_corpus

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as scratch:
        data = Path(scratch) / "data"
        build_corpus(data, args.docs, 0.2, args.shards, (5, 25), args.seed)
        print(f"{args.docs:,} documents in {args.shards} files; {os.cpu_count()} CPUs")
        results = []
        for executor, workers in (("local", 1), ("ray", 1), ("local", 2), ("ray", 2)):
            command = [sys.executable, __file__, "--child", executor, "--workers", str(workers),
                       "--data", str(data), "--scratch", scratch]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            if done.returncode:
                sys.exit(f"{executor} x{workers} failed:\n{done.stderr[-3000:]}")
            line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
            results.append(json.loads(line.removeprefix("RESULT ")))
    print_table(results)


def print_table(results: list[dict]) -> None:
    base = {r["workers"]: r for r in results if r["executor"] == "local"}
    one = {r["executor"]: r for r in results if r["workers"] == 1}
    print("| executor | workers | start-up s | clean s | dedup s | clean + dedup s | "
          "vs local, same workers | speed-up 1 -> 2 workers | kept |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        total = r["clean"] + r["dedup"]
        local = base[r["workers"]]["clean"] + base[r["workers"]]["dedup"]
        single = one[r["executor"]]["clean"] + one[r["executor"]]["dedup"]
        print(f"| {r['executor']} | {r['workers']} | {r['startup']:.1f} | {r['clean']:.1f} | "
              f"{r['dedup']:.1f} | {total:.1f} | {total / local:.2f}x | "
              f"{single / total:.2f}x | {r['kept']:,} |")  # fmt: skip


if __name__ == "__main__":
    main()
