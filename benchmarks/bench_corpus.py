"""Clean + dedup throughput in MB/s per core on mixed Chinese and English text.

Builds a corpus from the shared test texts (Bible chapters in English and Chinese, Wikipedia,
C4 pages, the Debian Reference in both languages, classical Chinese prose), cut into input
files, and times `chuan data clean` and `chuan data dedup` on it with one worker. The rate is
input megabytes per CPU-second of this process, so other load on the machine changes the wall
time, not the per-core rate.

    python benchmarks/bench_corpus.py [--copies 3] [--files 8]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from chuan.data.clean import clean_corpus
from chuan.data.dedup import dedup_corpus

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "text"


def documents() -> list[dict]:
    """Real documents of both languages, each a few hundred to a few thousand characters."""
    docs: list[dict] = []
    chapters: dict[str, list[tuple[str, str]]] = {}
    tsv = SHARED / "parallel" / "bible_kjv_cuvs_wenli.tsv"
    for line in tsv.read_text(encoding="utf-8").splitlines()[1:]:
        ref, english, chinese, _ = line.split("\t")
        chapters.setdefault(ref.rsplit(":", 1)[0], []).append((english, chinese))
    for verses in chapters.values():
        docs.append({"text": " ".join(e for e, _ in verses), "category": "en"})
        docs.append({"text": "".join(c for _, c in verses), "category": "zh"})
    for name, lang in (
        ("en/wiki_demo.txt", "en"),
        ("en/debian-reference.en.txt", "en"),
        ("zh_modern/debian-reference.zh-cn.txt", "zh"),
    ):
        text = (SHARED / name).read_text(encoding="utf-8")
        docs += [{"text": p, "category": lang} for p in text.split("\n\n") if len(p) > 200]
    for line in (SHARED / "en" / "c4_demo.jsonl").open(encoding="utf-8"):
        docs.append({"text": json.loads(line)["text"], "category": "en"})
    return docs


def write_inputs(root: Path, docs: list[dict], copies: int, files: int) -> float:
    """`copies` passes over the documents (later passes are exact duplicates) in `files`
    JSONL files; returns the megabytes written."""
    rows = [json.dumps(d, ensure_ascii=False) + "\n" for _ in range(copies) for d in docs]
    per_file = -(-len(rows) // files)
    size = 0
    for i in range(files):
        chunk = "".join(rows[i * per_file : (i + 1) * per_file])
        (root / f"part-{i:03d}.jsonl").write_text(chunk, encoding="utf-8")
        size += len(chunk.encode("utf-8"))
    return size / 1e6


def timed(run) -> tuple[float, float, dict]:
    wall, cpu = time.perf_counter(), time.process_time()
    report = run()
    return time.perf_counter() - wall, time.process_time() - cpu, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copies", type=int, default=3, help="passes over the texts (3)")
    parser.add_argument("--files", type=int, default=8, help="input files (8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        megabytes = write_inputs(root / "raw", documents(), args.copies, args.files)
        clean = timed(lambda: clean_corpus(root / "raw", root / "clean", progress=False))
        clean_mb = sum(p.stat().st_size for p in (root / "raw").iterdir()) / 1e6
        dedup = timed(
            lambda: dedup_corpus(
                root / "clean" / "shards", root / "dedup", workers=1, progress=False
            )
        )
    print(f"# Corpus stages on mixed zh/en text ({megabytes:.1f} MB in {args.files} files)\n")
    print("| stage | input MB | docs in | docs kept | wall s | CPU s | MB/s per core |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, (wall, cpu, report), size in (("clean", clean, clean_mb), ("dedup", dedup, None)):
        size = size if size is not None else clean[2]["bytes_out"] / 1e6
        print(
            f"| {name} | {size:.1f} | {report['read']:,} | {report['kept']:,} | {wall:.1f} | "
            f"{cpu:.1f} | {size / cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
