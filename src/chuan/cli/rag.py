"""`chuan rag`: index documents into a knowledge base, search it, make and run a QA set."""

from __future__ import annotations

import argparse
import json
import sys

from chuan.cli.generate import add_chat_model_arguments, add_sampling_arguments
from chuan.cli.options import (
    add_adapter_argument,
    add_cite_threshold_argument,
    add_device_arguments,
    add_retrieval_arguments,
    add_search_arguments,
    int_at_least,
)
from chuan.errors import InputError

_TEXT_WIDTH = 160


def _index(args: argparse.Namespace) -> None:
    from chuan.rag.build import build_kb

    manifest = build_kb(
        args.inputs,
        args.out,
        chunk_chars=args.chunk_chars,
        overlap=args.overlap,
        text_field=args.text_field,
        dense=args.dense,
        add=args.add,
        overwrite=args.overwrite,
        device=args.device,
        progress=not args.quiet,
    )
    counts = manifest["counts"]
    folding = "on" if manifest["analyzer"]["fold_traditional"] else "off (OpenCC not installed)"
    print(
        f"wrote {args.out}: {counts['files']:,} files, {counts['documents']:,} documents, "
        f"{counts['chunks']:,} chunks, {counts['vocabulary']:,} terms; dense "
        f"{manifest['dense']['kind']}; Traditional->Simplified folding {folding}"
    )


def _search(args: argparse.Namespace) -> None:
    from chuan.cli.generate import open_retrieval

    if args.rerank != "none" and not args.rerank_model:
        raise InputError(f"--rerank {args.rerank} needs --rerank-model DIR (a model dir)")
    hits = open_retrieval(args, args.kb).search(args.query)
    if args.json:
        found = {"query": args.query, "mode": args.mode, "threshold": args.threshold,
                 "hits": [h.to_dict() for h in hits]}  # fmt: skip
        print(json.dumps(found, ensure_ascii=False, indent=1))
        return
    if not hits:
        print(
            f"no results: no chunk of {args.kb} reaches relevance {args.threshold:g} for this "
            "query (--threshold 0 shows the closest chunks anyway)",
            file=sys.stderr,
        )
        return
    for hit in hits:
        text = " ".join(hit.text.split())
        if len(text) > _TEXT_WIDTH:
            text = text[: _TEXT_WIDTH - 1] + "…"
        print(
            f"{hit.rank}. {hit.location} chars [{hit.start}, {hit.end}) score {hit.score:.4g} "
            f"relevance {hit.relevance:.3f}\n   {text}"
        )


def _make_qa(args: argparse.Namespace) -> None:
    from chuan.rag.qa import make_qa

    counts = make_qa(args.inputs, args.out, absent=args.absent, per_type=args.per_type,
                     seed=args.seed)  # fmt: skip
    shown = ", ".join(f"{kind} {n}" for kind, n in counts.items())
    print(f"wrote {args.out}: {sum(counts.values())} questions ({shown})")


def _eval(args: argparse.Namespace) -> None:
    from chuan.rag.evaluate import evaluate

    answering = {}
    if args.model:
        from chuan.cli.generate import load_chat_model
        from chuan.infer.chat import fits_context, stream_chat

        model, tokenizer, cfg = load_chat_model(args)
        answering = {
            "generate": lambda messages: stream_chat(model, tokenizer, messages, cfg),
            "fits": fits_context(model, tokenizer, cfg),
            "limit": args.limit,
            "cite_threshold": args.cite_threshold,
            "model": args.model,
        }
    if args.rerank != "none":
        source = args.rerank_model or args.model
        if source is None:
            raise InputError(f"--rerank {args.rerank} needs --rerank-model DIR or --model DIR")
        from chuan.rag.rerank import Reranker

        answering["reranker"] = Reranker.open(source, args.rerank, device=args.device)
        answering["rerank_depth"] = args.rerank_depth
    report = evaluate(args.kb, args.qa, args.out, k=args.k, mode=args.mode,
                      threshold=args.threshold, **answering)  # fmt: skip
    for kind, row in report["types"].items():
        scores = ", ".join(f"{name} {value:.3f}" for name, value in row.items()
                           if isinstance(value, float))  # fmt: skip
        print(f"{kind}: {row['questions']} questions{', ' + scores if scores else ''}")
    ab = report["abstention"]
    if ab["precision"] is not None:
        print(f"abstention precision {ab['precision']:.3f}, recall {ab['recall'] or 0:.3f}")
    for kind, row in report.get("answers", {}).get("types", {}).items():
        scores = ", ".join(f"{name} {value:.3f}" for name, value in row.items()
                           if isinstance(value, float))  # fmt: skip
        print(f"answers, {kind}: {row['answered']} answered, {row['cited']} citing"
              f"{', ' + scores if scores else ''}")  # fmt: skip
    print(f"report in {args.out}/report.md")


def _ask(args: argparse.Namespace) -> None:
    from chuan.cli.generate import grounded_reply, load_chat_model, open_retrieval, with_reranker

    retrieval = open_retrieval(args, args.kb)  # a bad KB fails before the model loads
    model, tokenizer, cfg = load_chat_model(args)
    retrieval = with_reranker(retrieval, args, model, tokenizer)
    messages = [{"role": "user", "content": args.question}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    if not args.json:
        grounded_reply(retrieval, model, tokenizer, cfg, messages)
        return
    from chuan.infer.chat import fits_context, stream_chat

    answer = retrieval.ask(
        messages,
        lambda grounded: stream_chat(model, tokenizer, grounded, cfg),
        fits=fits_context(model, tokenizer, cfg),
    )
    print(json.dumps(answer.to_dict(), ensure_ascii=False, indent=1))


def register(verbs: argparse._SubParsersAction) -> None:
    from chuan.rag.chunking import DEFAULT_CHUNK_CHARS, DEFAULT_OVERLAP

    group = verbs.add_parser(
        "rag",
        help="retrieval: index documents into a knowledge base, search it, evaluate it",
        description="Retrieval over your own documents (see docs/rag.md).",
    )
    actions = group.add_subparsers(dest="rag_verb", required=True, metavar="ACTION")

    index = actions.add_parser(
        "index",
        help="chunk and index documents into a knowledge base dir",
        description="Read documents (JSONL / JSON / Parquet / txt, gz or zst, files or dirs, "
        "as `chuan data` reads them), cut them into chunks at paragraph and sentence ends "
        "(each keeps its file, line and character span), and write a knowledge base: the chunks, "
        "a BM25 index over bilingual terms (English words, Chinese character bigrams, "
        "Traditional folded to Simplified when OpenCC is installed), optional dense vectors "
        "and manifest.json. Each input file becomes one chunk shard: an interrupted run resumes "
        "file by file when run again. The same inputs give byte-identical indexes.",
        epilog="example: chuan rag index src/chuan/assets/sample --out runs/kb --dense lsa",
    )
    index.add_argument("inputs", nargs="+", metavar="DOCS", help="corpus files or dirs")
    index.add_argument("--out", required=True, metavar="KB", help="the knowledge base dir")
    index.add_argument(
        "--chunk-chars",
        type=int_at_least(1),
        metavar="N",
        help=f"most characters in a chunk, its overlap included (default {DEFAULT_CHUNK_CHARS})",
    )
    index.add_argument(
        "--overlap",
        type=int_at_least(0),
        metavar="N",
        help="characters each chunk repeats from the end of the one before, below "
        f"--chunk-chars (default {DEFAULT_OVERLAP})",
    )
    index.add_argument(
        "--text-field", metavar="NAME", help="the record field holding the text (default text)"
    )
    index.add_argument(
        "--dense",
        metavar="none|lsa|MODEL_DIR",
        help="dense vectors besides BM25: none (default), lsa (TF-IDF + truncated SVD trained "
        "on the chunks), or a model dir on disk (mean-pooled last hidden states)",
    )
    index.add_argument(
        "--add",
        action="store_true",
        help="add DOCS to the existing knowledge base --out, with its settings; the BM25 and "
        "dense statistics are rebuilt over all chunks (same result as indexing all at once)",
    )
    index.add_argument(
        "--overwrite", action="store_true", help="delete an existing --out and rebuild it"
    )
    index.add_argument("--device", help="for --dense MODEL_DIR: cpu, cuda, ... (default: a GPU)")
    index.add_argument("--quiet", action="store_true", help="no progress bars")
    index.set_defaults(func=_index)

    search = actions.add_parser(
        "search",
        help="the best chunks of a knowledge base for a query",
        description="Search a knowledge base. Prints each hit's source:line, character span "
        "[start, end) in its document, scores and text; nothing when the relevance filter "
        "finds the query is not about the knowledge base.",
        epilog='example: chuan rag search runs/kb "《登鹳雀楼》是谁写的？" -k 3',
    )
    search.add_argument("kb", metavar="KB", help="a dir written by `chuan rag index`")
    search.add_argument("query", help="the question or keywords, Chinese or English")
    search.add_argument(
        "-k", dest="kb_k", type=int_at_least(1), default=5, help="hits to show (default 5)"
    )
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.add_argument("--device", help="for a KB with model vectors: cpu, cuda, ...")
    add_search_arguments(search)
    # `open_retrieval` reads every retrieval setting; search checks no citations.
    from chuan.rag.cite import DEFAULT_CITE_THRESHOLD

    search.set_defaults(func=_search, cite_threshold=DEFAULT_CITE_THRESHOLD)

    make_qa = actions.add_parser(
        "make-qa",
        help="a retrieval QA set with known gold evidence, from documents",
        description="Write questions whose evidence is known (file sha256, line, span): who "
        "wrote a titled poem, the source of a verse with characters masked, the Chinese "
        "counterpart of an English passage, and (with --absent) unanswerable questions about "
        "titles no input document has. See docs/rag.md.",
        epilog="example: chuan rag make-qa src/chuan/assets/sample --out runs/qa.jsonl",
    )
    make_qa.add_argument("inputs", nargs="+", metavar="DOCS", help="the documents a KB indexes")
    make_qa.add_argument("--out", required=True, metavar="QA.jsonl", help="the questions")
    make_qa.add_argument(
        "--absent",
        nargs="+",
        metavar="DOCS",
        help="documents of the same layout not in the KB: their titles become unanswerable "
        "questions",
    )
    make_qa.add_argument(
        "--per-type", type=int_at_least(1), default=100, help="questions per type (default 100)"
    )
    make_qa.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    make_qa.set_defaults(func=_make_qa)

    evaluate = actions.add_parser(
        "eval",
        help="recall@k, MRR@10, nDCG@10 and abstention of a knowledge base on a QA set",
        description="Search every question of a QA set (from `chuan rag make-qa`) and report, "
        "per question type, recall@k (a gold chunk in the top k), the share of gold chunks in "
        "the top k, MRR@10 and nDCG@10 (ir-measures), and for unanswerable questions the "
        "precision and recall of abstaining; writes OUT/report.md and OUT/report.json.",
        epilog="example: chuan rag eval runs/kb runs/qa.jsonl --out runs/kb-eval",
    )
    evaluate.add_argument("kb", metavar="KB", help="a dir written by `chuan rag index`")
    evaluate.add_argument("qa", metavar="QA.jsonl", help="questions from `chuan rag make-qa`")
    evaluate.add_argument("--out", required=True, metavar="DIR", help="where the report goes")
    evaluate.add_argument("-k", type=int_at_least(1), default=5, help="the k of recall@k")
    add_search_arguments(evaluate)
    evaluate.add_argument(
        "--model",
        metavar="DIR",
        help="also answer questions with this chat model dir, citing the top k chunks, and "
        "report per type the answers' exact match (the normalised gold answer contained in "
        "the answer; for unanswerable questions, the no-source answer) and citation precision "
        "(the share of cited sources that overlap the gold evidence, or come from its "
        "document); the answers go to OUT/answers.jsonl",
    )
    evaluate.add_argument(
        "--limit",
        type=int_at_least(1),
        default=20,
        metavar="N",
        help="with --model: answer the first N questions of each type (default 20; "
        "retrieval is scored on all)",
    )
    add_cite_threshold_argument(evaluate)
    add_device_arguments(evaluate)
    add_adapter_argument(evaluate)
    add_sampling_arguments(evaluate, {"temperature": 0.0}, "default: from --model's dir")
    evaluate.set_defaults(func=_eval)

    ask = actions.add_parser(
        "ask",
        help="answer a question from a knowledge base with a model, citing sources",
        description="Retrieve the chunks of KB that answer QUESTION, put them numbered [1]..[k] "
        "into the prompt (in the model's chat template) with an instruction to cite them, "
        "generate, and check the reply's citations: a number that names no given source is "
        "removed; a sentence without one is given the source that shares enough of its terms "
        "(--cite-threshold). The cited sources follow as [n] file:line and a snippet. When the "
        "relevance filter finds nothing, the answer says so (in Chinese and English) and the "
        "model is not asked. See docs/rag.md.",
        epilog='example: chuan rag ask runs/sft/model runs/kb "《登鹳雀楼》是谁写的？"',
    )
    add_chat_model_arguments(ask)
    ask.add_argument("kb", metavar="KB", help="a dir written by `chuan rag index`")
    ask.add_argument("question", help="the question, Chinese or English")
    ask.add_argument("--system", default=None, help="system prompt (default: none)")
    ask.add_argument(
        "--json",
        action="store_true",
        help="print the answer as JSON: question, text, citations (index, source, line, start, "
        "end, text, score, relevance, chunk), sources (the prompt's: index, source, line, start, "
        "end), removed and added citation numbers",
    )
    add_retrieval_arguments(ask)
    ask.set_defaults(func=_ask)
