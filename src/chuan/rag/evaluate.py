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

With a generator (`chuan rag eval --model`), the first `limit` questions of each type are also
answered with citations (`chuan.rag.answer`) and scored per type:

- `exact_match`: the gold answer (any of the `、`-separated alternatives: a title several poets
  used) is contained in the answer, both normalised (NFKC, Traditional folded to Simplified as
  the KB's analyzer does, lowercase, punctuation and spaces removed); for an unanswerable
  question, the answer is the fixed "no relevant source" message; types without gold answers
  (cross_lingual) have none;
- `citation_precision_chunk` / `citation_precision_doc`: the share of an answer's cited sources
  that overlap the gold evidence / come from the gold document, averaged over the answers that
  cite anything (`cited` counts them).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from chuan.documents import RecordError, iter_records
from chuan.errors import DependencyError
from chuan.fileio import write_jsonl, write_report
from chuan.rag.answer import NO_SOURCE_ANSWER, Fits, Retrieval
from chuan.rag.cite import DEFAULT_CITE_THRESHOLD
from chuan.rag.kb import DEFAULT_THRESHOLD, KnowledgeBase
from chuan.rag.rerank import Reranker

DEPTH = 10
ANSWERS = "answers.jsonl"
# What answer matching ignores: punctuation, symbols and spaces of any script.
_NOT_WORD = re.compile(r"[\W_]+")


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


def _gold_documents(kb: KnowledgeBase, question: dict) -> set[int]:
    """Every chunk of the documents that hold the question's evidence."""
    return {
        i for e in question["gold"] for i in kb.chunks_by_line.get((e["sha256"], e["line"]), [])
    }


def _answer_scores(
    retrieval: Retrieval,
    qa_path,
    questions: list[dict],
    generate: Callable[[list[dict]], Iterable[str]],
    fits: Fits | None,
    limit: int | None,
) -> tuple[dict, list[dict]]:
    """Answer the first `limit` questions of each type; the scores per type and the answers."""
    normalize = retrieval.kb.analyzer.normalize

    def norm(text: str) -> str:
        return _NOT_WORD.sub("", normalize(text)).lower()

    taken: dict[str, int] = defaultdict(int)
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    answers = []
    for question in questions:
        kind = question["type"]
        if limit is not None and taken[kind] >= limit:
            continue
        taken[kind] += 1
        messages = [{"role": "user", "content": question["question"]}]
        answer = retrieval.ask(messages, generate, fits=fits)
        row = rows[kind]
        if not question["gold"]:
            row["exact_match"].append(float(answer.text == NO_SOURCE_ANSWER))
        elif question.get("answer"):
            golds = [norm(g) for g in question["answer"].split("、")]
            row["exact_match"].append(float(any(g and g in norm(answer.text) for g in golds)))
        cited = [c["chunk"] for c in answer.citations]
        if cited and question["gold"]:
            gold_chunks = _relevant(retrieval.kb, qa_path, question)
            gold_docs = _gold_documents(retrieval.kb, question)
            row["citation_precision_chunk"].append(
                sum(c in gold_chunks for c in cited) / len(cited)
            )
            row["citation_precision_doc"].append(sum(c in gold_docs for c in cited) / len(cited))
        answers.append({"id": question["id"], "type": kind, "question": question["question"],
                        "gold_answer": question.get("answer"), **answer.to_dict()})  # fmt: skip
    types = {}
    for kind, row in rows.items():
        types[kind] = {"answered": taken[kind], "cited": len(row["citation_precision_chunk"])}
        for name in ("exact_match", "citation_precision_chunk", "citation_precision_doc"):
            values = row.get(name)
            types[kind][name] = sum(values) / len(values) if values else None
    return types, answers


def evaluate(
    kb_path: str | Path,
    qa_path: str | Path,
    out: str | Path,
    *,
    k: int = 5,
    mode: str = "sparse",
    threshold: float | None = None,
    generate: Callable[[list[dict]], Iterable[str]] | None = None,
    fits: Fits | None = None,
    limit: int | None = None,
    cite_threshold: float = DEFAULT_CITE_THRESHOLD,
    model: str | None = None,
    reranker: Reranker | None = None,
    rerank_depth: int = 20,
) -> dict:
    """Search every question, score per type, write `out/report.{json,md}`; returns the report.

    With `generate` (messages -> text pieces, e.g. a chat model's `stream_chat`; `fits` checks
    a prompt fits its context), the first `limit` questions of each type are answered with
    citations too, scored under `answers` (see the module docstring; `model` names the
    generator in the report), and written to `out/answers.jsonl`. With `reranker`, every
    search is reranked (and filtered) by it, as `Retrieval` does."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    kb = KnowledgeBase.open(kb_path)
    retrieval = Retrieval(kb, k=k, mode=mode, threshold=threshold, cite_threshold=cite_threshold,
                          reranker=reranker, rerank_depth=rerank_depth)  # fmt: skip
    questions = read_qa(qa_path)
    qrels, run, abstained = {}, {}, {}
    for question in tqdm(questions, desc="searching", unit="question", disable=reranker is None):
        qid = question["id"]
        hits = retrieval.search(question["question"], max(k, DEPTH))
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
        "rerank": reranker.by if reranker else None,
        "questions": len(questions),
        "types": types,
        "abstention": {
            "unanswerable": len(unanswerable),
            "abstained": len(abstentions),
            "precision": correct / len(abstentions) if abstentions else None,
            "recall": correct / len(unanswerable) if unanswerable else None,
        },
    }
    if generate is not None:
        types, answers = _answer_scores(retrieval, qa_path, questions, generate, fits, limit)
        report["answers"] = {"model": model, "limit": limit, "cite_threshold": cite_threshold,
                             "types": types}  # fmt: skip
        write_jsonl(Path(out) / ANSWERS, answers)
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
    if "answers" in report:
        lines += _answers_markdown(report["answers"], fmt)
    return "\n".join(lines)


def _answers_markdown(answers: dict, fmt) -> list[str]:
    lines = [
        "## Cited answers",
        "",
        f"Model `{answers['model']}`, the first {answers['limit'] or 'all'} questions of each "
        f"type, citation threshold {answers['cite_threshold']:g}; every answer in `{ANSWERS}`.",
        "",
        "| type | answered | exact match | cited | citation precision (chunk) | (document) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind, row in answers["types"].items():
        lines.append(
            f"| {kind} | {row['answered']} | {fmt(row['exact_match'])} | {row['cited']} | "
            f"{fmt(row['citation_precision_chunk'])} | {fmt(row['citation_precision_doc'])} |"
        )
    lines += [
        "",
        "Exact match: the normalised gold answer is contained in the answer (for unanswerable "
        "questions: the answer is the fixed no-source message). Citation precision: the share "
        "of cited sources overlapping the gold evidence (chunk) or from its document, over the "
        "answers that cite something.",
        "",
    ]
    return lines
