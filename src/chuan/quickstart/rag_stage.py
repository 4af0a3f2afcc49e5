"""The quickstart's last stage: a knowledge base of the sample corpus, and three questions
answered with citations by the fine-tuned chat model, as `chuan rag index` and `chuan rag ask`
do it. The tiny model writes noise; the stage shows the machinery end to end: retrieval, the
numbered sources in the chat prompt, the citation check, the sources listed as file:line, and
the fixed answer for a question the knowledge base knows nothing about."""

from __future__ import annotations

from chuan.quickstart.runner import Context

QUESTIONS = [
    "《登鹳雀楼》是谁写的？",
    "In the beginning, what moved upon the face of the waters?",
    "量子色动力学的渐近自由是什么？",  # nothing in the sample: answered without the model
]
NEW_TOKENS = 32
SOURCES = 3


def rag(ctx: Context) -> dict:
    """Index `raw/` (the sample as the corpus stage copied it, planted copies left out) into
    `kb/`, then ask the fine-tuned model each question greedily."""
    import dataclasses

    from chuan.infer.chat import default_config, fits_context, stream_chat
    from chuan.infer.loading import load_model, load_saved_tokenizer
    from chuan.rag.answer import Retrieval
    from chuan.rag.build import build_kb

    inputs = sorted(p for p in ctx.path("raw").glob("*.jsonl") if p.name != "planted.jsonl")
    manifest = build_kb(inputs, ctx.path("kb"), overwrite=True, progress=False)
    model_dir = ctx.results["sft"]["model_dir"]
    model = load_model(model_dir, device="cpu", dtype="fp32")
    tokenizer = load_saved_tokenizer(model_dir)
    cfg = dataclasses.replace(default_config(model, tokenizer), temperature=0.0,
                              max_new_tokens=NEW_TOKENS, repetition_penalty=1.1)  # fmt: skip
    retrieval = Retrieval.open(ctx.path("kb"), k=SOURCES)
    answers = [
        retrieval.ask(
            [{"role": "user", "content": question}],
            lambda messages: stream_chat(model, tokenizer, messages, cfg),
            fits=fits_context(model, tokenizer, cfg),
        ).to_dict()
        for question in QUESTIONS
    ]
    cited = sum(len(a["citations"]) for a in answers)
    unanswered = sum(not a["sources"] for a in answers)
    return {
        "kb": str(ctx.path("kb")),
        "chunks": manifest["counts"]["chunks"],
        "model_dir": model_dir,
        "answers": answers,
        "summary": f"{manifest['counts']['chunks']:,} chunks indexed; {len(QUESTIONS)} questions "
        f"answered by the fine-tuned model with {cited} citations, {unanswered} with no "
        "relevant source (answered without the model)",
    }
