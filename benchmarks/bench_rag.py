"""Retrieval on the bundled sample: chuan's BM25 (bm25s) against rank-bm25 and a plain
scikit-learn TF-IDF retriever on the same chunks and the same analyzer terms, then recall@5 of
chuan's sparse, dense (LSA) and hybrid modes on the `chuan rag make-qa` questions.

    pip install -e ".[rag,bench]" && python benchmarks/bench_rag.py

Build time: chunk texts -> a queryable index, analyzing included (the same analyzer for all,
so the numbers compare the index engines). Query time: one question -> the top 5, over the
answerable and unanswerable questions. recall@5: a gold chunk among the top 5 (the relevance
filter off for every engine, so recall compares rankings; `chuan rag eval` reports it with the
filter on).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from chuan.rag.build import build_kb
from chuan.rag.evaluate import _relevant, read_qa
from chuan.rag.kb import KnowledgeBase, _top
from chuan.rag.qa import make_qa
from chuan.rag.sparse import SparseIndex

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src/chuan/assets/sample"
TANG = ROOT / "tests/data/text/zh_classical/chinese_poetry/poet.tang.0.json"


def _percentiles(times: list[float]) -> tuple[float, float]:
    ms = np.asarray(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench_rag_"))
    absent = work / "absent.jsonl"
    absent.write_text("".join(
        json.dumps({"text": f"{p['title']}（{p['author']}）\n" + "\n".join(p["paragraphs"])},
                   ensure_ascii=False) + "\n"
        for p in json.loads(TANG.read_text())
    ))  # fmt: skip
    make_qa([SAMPLE], work / "qa.jsonl", absent=[absent])
    start = time.perf_counter()
    build_kb([SAMPLE], work / "kb", dense="lsa", progress=False)
    full_build = time.perf_counter() - start
    kb = KnowledgeBase.open(work / "kb")
    texts = [c["text"] for c in kb.chunks]
    questions = read_qa(work / "qa.jsonl")
    gold = {q["id"]: _relevant(kb, "qa", q) for q in questions if q["gold"]}

    engines = {}

    start = time.perf_counter()
    terms = [kb.analyzer.terms(t) for t in texts]
    SparseIndex.build(terms)
    engines["chuan (bm25s)"] = {
        "build": time.perf_counter() - start,
        "rank": lambda q: [h.chunk for h in kb.search(q, 5, threshold=0)],
    }

    from rank_bm25 import BM25Okapi

    start = time.perf_counter()
    okapi = BM25Okapi([kb.analyzer.terms(t) or [""] for t in texts])
    engines["rank-bm25 (BM25Okapi)"] = {
        "build": time.perf_counter() - start,
        "rank": lambda q: _top(okapi.get_scores(kb.analyzer.terms(q)), 5),
    }

    from sklearn.feature_extraction.text import TfidfVectorizer

    start = time.perf_counter()
    vectorizer = TfidfVectorizer(analyzer=kb.analyzer.terms, sublinear_tf=True)
    matrix = vectorizer.fit_transform(texts)
    engines["scikit-learn TF-IDF"] = {
        "build": time.perf_counter() - start,
        "rank": lambda q: _top((matrix @ vectorizer.transform([q]).T).toarray().ravel(), 5),
    }
    for mode in ("dense", "hybrid"):
        engines[f"chuan {mode} (LSA)"] = {
            "build": None,
            "rank": lambda q, m=mode: [h.chunk for h in kb.search(q, 5, mode=m, threshold=0)],
        }

    results = {"chunks": len(texts), "questions": len(questions), "full_build_s": full_build,
               "engines": {}}  # fmt: skip
    types = sorted({q["type"] for q in questions if q["gold"]})
    for name, engine in engines.items():
        times, hits = [], {t: [] for t in types}
        for question in questions:
            start = time.perf_counter()
            ranked = engine["rank"](question["question"])
            times.append(time.perf_counter() - start)
            if question["gold"]:
                hits[question["type"]].append(bool(gold[question["id"]] & set(ranked)))
        p50, p95 = _percentiles(times)
        results["engines"][name] = {
            "build_s": engine["build"],
            "query_p50_ms": p50,
            "query_p95_ms": p95,
            "recall@5": {t: float(np.mean(v)) for t, v in hits.items()},
        }

    print(f"{len(texts):,} chunks of the bundled sample, {len(questions)} questions; "
          f"`chuan rag index --dense lsa` whole: {full_build:.1f} s")  # fmt: skip
    header = "| engine | build s | query p50 ms | query p95 ms | " + " | ".join(
        f"recall@5 {t}" for t in types
    )
    print(header + " |")
    print("|---|" + "---:|" * (3 + len(types)))
    for name, row in results["engines"].items():
        build = "–" if row["build_s"] is None else f"{row['build_s']:.2f}"
        recall = " | ".join(f"{row['recall@5'][t]:.2f}" for t in types)
        print(f"| {name} | {build} | {row['query_p50_ms']:.2f} | {row['query_p95_ms']:.2f} | "
              f"{recall} |")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
