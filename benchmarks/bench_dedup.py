"""MinHash-LSH dedup: chuan's `dedup_corpus` against datasketch (MinHash + MinHashLSH).

Both get the same documents, the same shingles, the same number of permutations and the same
threshold; datasketch's optimiser then picks the same bands x rows. datasketch is fed by
`python_shingles`, the per-document `unicodedata` + `re` shingler a datasketch pipeline writes
(text-dedup's is the same shape); chuan shingles batches of documents on their code points
(`chuan.data.minhash.shingle_forms`). Each system runs in its own subprocess, so peak RSS is its
own. Besides the whole job, the signature stage is timed alone: chuan's pass 1 (reading,
shingling, MinHash, exact and sentence keys) against datasketch's reading, shingling and
`MinHash.update_batch`.

The corpus is built from ../shared/data/text: unique documents are 5-25 random sentences of one
language (Bible verses in English and Chinese, Wikipedia, C4, Debian fortunes), and a share of
them get planted near-duplicates with 0.1-1% of their units (words in English, characters in
Chinese) replaced. Recall is the share of planted pairs that land in one cluster; precision the
share of removed documents that are planted copies of a document in their cluster.

    pip install datasketch      # benchmark-only dependency
    python benchmarks/bench_dedup.py [--docs 100000] [--workers N]

chuan runs once with one worker and once with `--workers` (default: all cores) for signatures and
the final filter; datasketch is a single-process library. "docs/s per core" divides by the
workers each run used; on a shared machine the one-worker row is the fair per-core figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from chuan.data import minhash  # noqa: E402
from chuan.data.dedup import dedup_corpus  # noqa: E402
from chuan.data.shards import output_records, read_jsonl_zst  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "text"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EN_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_ZH_SENTENCE = re.compile(r"(?<=[。！？])")


def sentence_pools() -> dict[str, list[str]]:
    """Real sentences per language from the shared test texts."""
    bible = [line.split("\t") for line in (TEXT / "parallel" / "bible_kjv_cuvs_wenli.tsv")
             .read_text(encoding="utf-8").splitlines()[1:]]  # fmt: skip
    fortunes = _ANSI.sub("", (TEXT / "zh_modern" / "fortunes_zh_chinese").read_text("utf-8"))
    wiki = (TEXT / "en" / "wiki_demo.txt").read_text(encoding="utf-8")
    c4 = " ".join(json.loads(line)["text"] for line in
                  (TEXT / "en" / "c4_demo.jsonl").read_text("utf-8").splitlines())  # fmt: skip
    en = [row[1] for row in bible if row[1]] + _EN_SENTENCE.split(wiki) + _EN_SENTENCE.split(c4)
    zh = [row[2] for row in bible if len(row) > 2 and row[2]]
    zh += [s.strip() for s in _ZH_SENTENCE.split(fortunes) if s.strip() and "%" not in s]
    return {
        "en": [s.strip() for s in en if len(s.split()) >= 4],
        "zh": [s for s in zh if len(s) >= 8],
    }


def edit(text: str, by_chars: bool, fraction: float, rng: random.Random, pool: str) -> str:
    """`text` with `fraction` of its units (characters or words) replaced, at least one."""
    units = list(text) if by_chars else text.split(" ")
    for i in rng.sample(range(len(units)), max(1, round(fraction * len(units)))):
        units[i] = rng.choice(pool) if by_chars else rng.choice(pool.split())
    return ("" if by_chars else " ").join(units)


def build_corpus(
    folder: Path, docs: int, dup_share: float, shards: int, sentences: tuple[int, int], seed: int
) -> list:
    """Write `docs` documents over `shards` JSONL files; returns the planted (original, copy)
    pairs as document numbers `n` (the record field that identifies them)."""
    rng = random.Random(seed)
    pools = sentence_pools()
    zh_chars = "".join(sorted({c for s in pools["zh"][:5000] for c in s if minhash.is_cjk(c)}))
    en_words = " ".join(sorted({w for s in pools["en"][:5000] for w in s.split() if w.isalpha()}))
    uniques = int(docs * (1 - dup_share))
    texts, planted = [], []
    for _ in range(uniques):
        lang = "zh" if rng.random() < 0.5 else "en"
        picked = rng.sample(pools[lang], rng.randint(*sentences))
        texts.append(("" if lang == "zh" else " ").join(picked))
    for n in range(uniques, docs):
        original = rng.randrange(uniques)
        by_chars = minhash.is_cjk(minhash.squeeze(texts[original]))
        pool = zh_chars if by_chars else en_words
        texts.append(edit(texts[original], by_chars, rng.uniform(0.001, 0.01), rng, pool))
        planted.append((original, n))
    order = list(range(docs))
    rng.shuffle(order)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(shards):
        with open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8") as f:
            for n in order[i::shards]:
                f.write(json.dumps({"n": n, "text": texts[n]}, ensure_ascii=False) + "\n")
    return planted


_NON_WORD = re.compile(r"[\W_]+")
_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
                  "\U00020000-\U0003134f]")  # fmt: skip


def python_shingles(text: str, n: int = minhash.NGRAM) -> set[str]:
    """chuan's shingle definition written per document with `unicodedata` and `re`, as a
    datasketch user would: characters for CJK documents, words for the rest."""
    spaced = _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    squeezed = spaced.replace(" ", "")
    cjk = len(_CJK.findall(squeezed))
    by_chars = cjk > 0 and cjk >= minhash.CJK_SHARE * len(squeezed)
    units = squeezed if by_chars else spaced.split()
    if len(units) <= n:
        return {squeezed if by_chars else spaced}
    sep = "" if by_chars else " "
    return {sep.join(units[i : i + n]) for i in range(len(units) - n + 1)}


def run_chuan(data: Path, out: Path, args) -> tuple[np.ndarray, float]:
    """Cluster label (the representative's `n`) per document number, from chuan's outputs, and
    the seconds of the signature pass."""
    report = dedup_corpus(data, out, threshold=args.threshold, num_perm=args.num_perm,
                          sentence_max_repeats=0, seed=args.seed, workers=args.workers,
                          progress=False)  # fmt: skip
    labels = np.full(args.docs, -1, np.int64)
    rep_n = {}
    for record in output_records(out):
        rep_n[record["meta"]["cluster_id"]] = record["n"]
        labels[record["n"]] = record["n"]
    for path in sorted((out / "rejects").glob("*.jsonl.zst")):
        for reject in read_jsonl_zst(path):
            labels[reject["record"]["n"]] = rep_n[reject["duplicate_of"]["position"]]
    return labels, report["timing"]["signatures_s"]


def run_datasketch(data: Path, args) -> tuple[np.ndarray, float]:
    """The same job with datasketch: shingles, MinHash.update_batch, MinHashLSH query + insert,
    and the same union-find over the candidates; also the seconds spent reading, shingling and
    in `MinHash`."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=args.threshold, num_perm=args.num_perm)
    numbers = []
    edges = []
    signing = 0.0
    for path in sorted(data.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                start = time.perf_counter()
                record = json.loads(line)
                signature = MinHash(num_perm=args.num_perm, seed=args.seed)
                signature.update_batch([s.encode() for s in python_shingles(record["text"])])
                signing += time.perf_counter() - start
                key = len(numbers)
                edges.extend((other, key) for other in lsh.query(signature))
                lsh.insert(key, signature)
                numbers.append(record["n"])
    pairs = np.array(edges, np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), (len(numbers),) * 2)
    numbers = np.array(numbers)
    labels = np.empty(args.docs, np.int64)
    component = connected_components(graph, directed=False)[1]
    first = np.full(component.max() + 1, len(numbers))
    np.minimum.at(first, component, np.arange(len(numbers)))  # each component's first member
    labels[numbers] = numbers[first[component]]
    return labels, signing


def quality(labels: np.ndarray, planted: list) -> dict[str, float]:
    """Recall over planted pairs; precision over removed documents (all but the earliest
    document number of each cluster)."""
    pairs = np.array(planted).reshape(-1, 2)
    recall = float((labels[pairs[:, 0]] == labels[pairs[:, 1]]).mean()) if len(pairs) else 1.0
    first = {}
    for n in np.argsort(labels, kind="stable"):
        first.setdefault(int(labels[n]), int(n))
    removed = [n for n in range(len(labels)) if first[int(labels[n])] != n]
    original_of = dict(zip(pairs[:, 1].tolist(), pairs[:, 0].tolist(), strict=True))
    good = sum(1 for n in removed if n in original_of and labels[original_of[n]] == labels[n])
    return {"recall": recall, "precision": good / len(removed) if removed else 1.0,
            "removed": len(removed)}  # fmt: skip


class TreeMemory:
    """Peak memory of this process plus all its descendants: the sum of their proportional set
    sizes (PSS: pages shared by forked workers count once), sampled from /proc every 20 ms.
    getrusage would mislead: a forked or exec'd process inherits its parent's `ru_maxrss`."""

    def __init__(self):
        self.peak = self.current()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    @staticmethod
    def current() -> float:
        """MiB resident in this process tree now (PSS)."""
        total, todo = 0, [os.getpid()]
        while todo:
            pid = todo.pop()
            try:
                status = Path(f"/proc/{pid}/smaps_rollup").read_text()
                total += int(re.search(r"\nPss:\s+(\d+)", status).group(1))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo.extend(int(c) for c in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError, AttributeError):
                continue  # a worker that just exited
        return total / 1024

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.current())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.current())


def child(args) -> None:
    """One system in this process: print its time, peak RSS and quality as JSON."""
    data = Path(args.data)
    planted = json.loads((Path(args.scratch) / "planted.json").read_text())
    memory = TreeMemory()
    imported = memory.peak  # `import chuan` loads torch and transformers
    start = time.perf_counter()
    if args.child == "chuan":
        labels, signing = run_chuan(data, Path(args.scratch) / f"chuan-out-{args.workers}", args)
        cores = args.workers
    else:
        labels, signing = run_datasketch(data, args)
        cores = 1
    elapsed = time.perf_counter() - start
    result = {
        "system": args.child,
        "seconds": elapsed,
        "signature_seconds": signing,
        "cores": cores,
        "import_mib": imported,
        "peak_mib": memory.stop(),
        **quality(labels, planted),
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dup-share", type=float, default=0.2)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument(
        "--sentences", type=int, nargs=2, default=(5, 25), metavar=("MIN", "MAX"),
        help="sentences per unique document (default 5 25: ~300 words / ~450 characters)",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--child", choices=["chuan", "datasketch"], help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-dedup-") as scratch:
        data = Path(scratch) / "data"
        planted = build_corpus(
            data, args.docs, args.dup_share, args.shards, tuple(args.sentences), args.seed
        )
        (Path(scratch) / "planted.json").write_text(json.dumps(planted))
        print(f"{args.docs:,} documents, {len(planted):,} planted near-duplicates, "
              f"{args.num_perm} permutations, threshold {args.threshold}, "
              f"bands x rows {minhash.optimal_bands(args.threshold, args.num_perm)}")  # fmt: skip
        runs = [("chuan", 1)] + ([("chuan", args.workers)] if args.workers > 1 else [])
        runs.append(("datasketch", 1))
        results = [_run_child(system, workers, data, scratch, args) for system, workers in runs]
    print_table(results, args.docs)


def _run_child(system: str, workers: int, data: Path, scratch: str, args) -> dict:
    command = [sys.executable, __file__, "--child", system, "--data", str(data),
               "--scratch", scratch, "--docs", str(args.docs), "--workers", str(workers),
               "--threshold", str(args.threshold), "--num-perm", str(args.num_perm),
               "--seed", str(args.seed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"{system} failed:\n{done.stderr}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def print_table(results: list[dict], docs: int) -> None:
    print(
        "| system | cores | seconds | docs/s | docs/s per core | signature stage docs/s per "
        "core | peak MiB (PSS), all processes (above import) | recall | precision | removed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        rate = docs / r["seconds"]
        signing = docs / r["signature_seconds"] / r["cores"]
        print(f"| {r['system']} | {r['cores']} | {r['seconds']:.1f} | {rate:,.0f} | "
              f"{rate / r['cores']:,.0f} | {signing:,.0f} | {r['peak_mib']:.0f} "
              f"(+{r['peak_mib'] - r['import_mib']:.0f}) "
              f"| {r['recall']:.4f} | {r['precision']:.4f} | {r['removed']:,} |")  # fmt: skip
    peer = results[-1]
    for chuan in results[:-1]:
        per_core = (peer["seconds"] * peer["cores"]) / (chuan["seconds"] * chuan["cores"])
        signing = (peer["signature_seconds"] * peer["cores"]) / (
            chuan["signature_seconds"] * chuan["cores"]
        )
        wall = peer["seconds"] / chuan["seconds"]
        print(
            f"chuan ({chuan['cores']} workers) / datasketch: {wall:.1f}x wall, "
            f"{per_core:.1f}x per core (whole job), {signing:.1f}x per core (signatures)"
        )


if __name__ == "__main__":
    main()
