"""`chuan rag eval`: retrieval quality of a knowledge base on a QA set, per question type.

A question's relevant chunks are the KB's chunks that overlap its gold evidence (same file
content by sha256, same line, overlapping character span), so a QA set serves any chunking.
Each question is searched as a user would (the mode and relevance filter given), and scored
with `ir-measures` (the measures of trec_eval through pytrec_eval, the reference implementation
the IR literature reports; a small wheel, unlike ranx which pulls numba):

- `recall@k`: Success@k, the share of questions with a relevant chunk in the top k (a question
  needs one chunk that answers it; this is what "recall@k" means for RAG retrieval);
- `gold_recall@k`: R@k, the share of each question's relevant chunks in the top k;
- `MRR@10`: RR@10; `nDCG@10`: nDCG@10 with binary relevance.

A question that the filter answers with nothing scores 0 on all of them (trec_eval would skip it
and overstate the mean). Unanswerable questions are scored on abstention: its precision is the
share of abstentions (empty results) that were unanswerable questions, its recall the share of
unanswerable questions that got none.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from chuan.documents import RecordError, iter_records
from chuan.errors import DependencyError
from chuan.fileio import write_report
from chuan.rag.kb import DEFAULT_THRESHOLD, KnowledgeBase

DEPTH = 10


def read_qa(path: str | Path) -> list[dict]:
    """The questions of a QA file, checked field by field (errors name file, line, field)."""
    questions = []
    for line, record in iter_records(path):
        if not isinstance(record, dict):
            raise RecordError(path, line, f"expected a JSON object, got {type(record).__name__}")
        for field, kind in (("id", str), ("type", str), ("question", str), ("gold", list)):
            if not isinstance(record.get(field), kind):
                raise RecordError(path, line, f"missing or not a {kind.__name__}", field)
        for evidence in record["gold"]:
            if not isinstance(evidence, dict) or not {"sha256", "line", "start", "end"} <= set(
                evidence
            ):
                raise RecordError(
                    path, line, "each entry needs sha256, line, start and end", "gold"
                )
        questions.append({**record, "_line": line})
    return questions


def _relevant(kb: KnowledgeBase, qa_path, question: dict) -> set[int]:
    """The KB chunks that overlap the question's evidence."""
    relevant = set()
    for evidence in question["gold"]:
        chunks = kb.chunks_by_line.get((evidence["sha256"], evidence["line"]))
        if chunks is None:
            raise RecordError(
                qa_path,
                question["_line"],
                f"its evidence ({evidence.get('source', '?')}:{evidence['line']}, sha256 "
                f"{evidence['sha256'][:12]}…) is not in the knowledge base {kb.path}: make the "
                "QA set from the files the KB indexes",
                "gold",
            )
        relevant.update(
            i for i in chunks
            if kb.chunks[i]["start"] < evidence["end"] and evidence["start"] < kb.chunks[i]["end"]
        )  # fmt: skip
    return relevant


def evaluate(
    kb_path: str | Path,
    qa_path: str | Path,
    out: str | Path,
    *,
    k: int = 5,
    mode: str = "sparse",
    threshold: float | None = None,
) -> dict:
    """Search every question, score per type, write `out/report.{json,md}`; returns the report."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    kb = KnowledgeBase.open(kb_path)
    questions = read_qa(qa_path)
    qrels, run, abstained = {}, {}, {}
    for question in questions:
        qid = question["id"]
        hits = kb.search(question["question"], max(k, DEPTH), mode=mode, threshold=threshold)
        abstained[qid] = not hits
        if question["gold"]:
            qrels[qid] = {str(i): 1 for i in _relevant(kb, qa_path, question)}
        # scores that fall with the rank, so trec_eval keeps the KB's order
        run[qid] = {str(h.chunk): float(len(hits) - h.rank + 1) for h in hits}

    try:
        import ir_measures
        from ir_measures import RR, R, Success, nDCG
    except ImportError:
        raise DependencyError(
            "`chuan rag eval` needs ir-measures: pip install 'chuan[rag]'"
        ) from None
    measures = {f"recall@{k}": Success @ k, f"gold_recall@{k}": R @ k,
                "MRR@10": RR @ 10, "nDCG@10": nDCG @ 10}  # fmt: skip
    per_query: dict[str, dict[str, float]] = defaultdict(dict)
    scored_run = {q: docs for q, docs in run.items() if q in qrels and docs}
    for metric in ir_measures.iter_calc(list(measures.values()), qrels, scored_run):
        per_query[metric.query_id][str(metric.measure)] = metric.value

    by_type: dict[str, list[dict]] = defaultdict(list)
    for question in questions:
        by_type[question["type"]].append(question)
    types = {}
    for kind, group in by_type.items():
        answerable = [q for q in group if q["gold"]]
        row = {"questions": len(group), "abstained": sum(abstained[q["id"]] for q in group)}
        if answerable:
            for name, measure in measures.items():
                values = [per_query.get(q["id"], {}).get(str(measure), 0.0) for q in answerable]
                row[name] = sum(values) / len(values)
        types[kind] = row

    unanswerable = [q["id"] for q in questions if not q["gold"]]
    abstentions = [q for q, empty in abstained.items() if empty]
    correct = sum(abstained[q] for q in unanswerable)
    report = {
        "kb": str(kb_path),
        "qa": str(qa_path),
        "mode": mode,
        "k": k,
        "threshold": threshold,
        "questions": len(questions),
        "types": types,
        "abstention": {
            "unanswerable": len(unanswerable),
            "abstained": len(abstentions),
            "precision": correct / len(abstentions) if abstentions else None,
            "recall": correct / len(unanswerable) if unanswerable else None,
        },
    }
    write_report(out, report, _markdown(report))
    return report


def _markdown(report: dict) -> str:
    k = report["k"]
    names = [f"recall@{k}", f"gold_recall@{k}", "MRR@10", "nDCG@10"]
    lines = [
        "# Retrieval evaluation",
        "",
        f"Knowledge base `{report['kb']}`, questions `{report['qa']}`, mode {report['mode']}, "
        f"relevance threshold {report['threshold']:g}.",
        "",
        "| type | questions | " + " | ".join(names) + " | abstained |",
        "|---|---:|" + "---:|" * len(names) + "---:|",
    ]
    for kind, row in report["types"].items():
        cells = [f"{row[n]:.3f}" if n in row else "–" for n in names]
        lines.append(f"| {kind} | {row['questions']} | " + " | ".join(cells)
                     + f" | {row['abstained']} |")  # fmt: skip
    ab = report["abstention"]

    def fmt(value):
        return "–" if value is None else f"{value:.3f}"

    lines += [
        "",
        f"Abstention: {ab['abstained']} questions got no result; precision {fmt(ab['precision'])} "
        f"(share of them that were unanswerable), recall {fmt(ab['recall'])} (share of the "
        f"{ab['unanswerable']} unanswerable questions that got none).",
        "",
        f"`recall@{k}`: a relevant chunk in the top {k} (Success@{k}); `gold_recall@{k}`: share of "
        f"the relevant chunks in the top {k} (R@{k}); measures by ir-measures.",
        "",
    ]
    return "\n".join(lines)
