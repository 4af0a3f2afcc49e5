"""`report.md` and `report.json` of a quickstart run: one line per stage, the details that
matter per stage, the plots, and the commands that redo each stage by hand."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from chuan import fileio
from chuan.quickstart.runner import Context, Stage


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _image(ctx: Context, path: str | Path, alt: str) -> list[str]:
    path = Path(path)
    if not path.is_file():
        return []
    return [f"![{alt}]({os.path.relpath(path, ctx.out)})", ""]


def _dedup(ctx: Context, r: dict) -> list[str]:
    return [
        f"{r['read']:,} documents in, {r['kept']:,} kept: {r['exact_duplicates']} exact and "
        f"{r['near_duplicates']} near duplicates removed. Of the {r['planted_pairs']} planted "
        f"copies (exact and one-word edits of sample documents), **{r['planted_found']}** were "
        "found.",
    ]


def _tokenizer(ctx: Context, r: dict) -> list[str]:
    rows = [[lang, f"{v:.3f}"] for lang, v in r["chars_per_token"].items()]
    return [
        *_table(["held-out text", "characters per token"], rows),
        "",
        *_image(ctx, ctx.path("tokenizer", "compression.png"), "tokenizer compression"),
    ]


def _pretrain(ctx: Context, r: dict) -> list[str]:
    plan = r["plan"]
    how = (
        f"{r['steps']} steps (chosen from the time budget: {plan['step_seconds']} s per step "
        f"measured, {plan['budget_seconds']:.0f} s left for training)"
        if plan.get("step_seconds")
        else f"{r['steps']} steps (as asked)"
    )
    held = "" if r["eval_loss"] is None else f"; held-out loss {r['eval_loss']:.4f}"
    return [
        f"A `tiny` model, {how}, {r['tokens']:,} tokens: training loss {r['first_loss']:.4f} "
        f"→ {r['final_loss']:.4f}{held}. Model dir: `{r['model_dir']}`.",
        "",
        *_image(ctx, ctx.path("pretrain", "loss.png"), "loss curves"),
    ]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _sft(ctx: Context, r: dict) -> list[str]:
    lora, data = r["lora"], r["data"]
    mixed = " + ".join(f"{n:,} {Path(path).stem}" for path, n in data["mixed"].items())
    rows = [
        [_cell(x["prompt"]), _cell(x["reference"]), _cell(x["before"]), _cell(x["after"])]
        for x in r["replies"]
    ]
    return [
        f"LoRA (r {lora['r']}, alpha {lora['alpha']:g}, {', '.join(lora['targets'])}; "
        f"{r['trainable_parameters']:,} trainable parameters) on the pretrained model: "
        f"{mixed} conversations in {data['rows']:,} packed rows, {r['steps']} steps, "
        f"{r['tokens']:,} tokens, training loss {r['first_loss']:.4f} → {r['final_loss']:.4f}. "
        f"Held-out assistant loss ({r['heldout_conversations']} translation conversations "
        f"never trained on, answers only): **{r['heldout_loss_before']:.4f} → "
        f"{r['heldout_loss_after']:.4f}**. Model dir (adapter merged): `{r['model_dir']}`.",
        "",
        "Greedy replies to held-out prompts, before and after fine-tuning:",
        "",
        *_table(["prompt", "reference", "before", "after"], rows),
    ]


def _evaluate(ctx: Context, r: dict) -> list[str]:
    rows = []
    for model in ("initialised", "pretrained"):
        files = r[model]["perplexity"]
        for name, stats in files.items():
            rows.append(
                [
                    model,
                    name,
                    f"{stats['tokens']:,}",
                    f"{stats['mean_loss']:.3f}",
                    f"{stats['perplexity']:,.1f}",
                    f"{stats['bits_per_byte']:.3f}",
                ]
            )
    quiz = [
        [model, f"{r[model]['quiz']['average']:.1f}"]
        + [f"{s['accuracy']:.1f} ({s['n']})" for s in r[model]["quiz"]["subjects"].values()]
        for model in ("initialised", "pretrained")
    ]
    subjects = list(r["pretrained"]["quiz"]["subjects"])
    return [
        "Held-out text (every 20th sample document, never trained on):",
        "",
        *_table(["model", "text", "tokens", "loss (nats)", "perplexity", "bits/byte"], rows),
        "",
        "The bundled quiz (`assets/quiz`, CMMLU layout, 5-shot, first-token scoring), "
        "accuracy in percent (questions):",
        "",
        *_table(["model", "average", *subjects], quiz),
    ]


def _generate(ctx: Context, r: dict) -> list[str]:
    rows = [
        [f"`{s['prompt']}`", s["completion"].replace("\n", " ").replace("|", "\\|")]
        for s in r["samples"]
    ]
    return [
        f"Greedy, repetition penalty 1.1, {r['tokens_per_second']:,.0f} tokens/s:",
        "",
        *_table(["prompt", "continuation"], rows),
    ]


def _quantize(ctx: Context, r: dict) -> list[str]:
    rows = [
        ["fp32", f"{r['int8']['source_bytes'] / 2**20:.2f}", f"{r['fp32_perplexity']:.2f}", "–"]
    ]
    rows += [
        [
            name,
            f"{q['weight_bytes'] / 2**20:.2f}",
            f"{q['perplexity']:.2f}",
            f"{q['perplexity_change']:+.2%}",
        ]
        for name, q in r.items()
        if name.startswith("int")
    ]
    return _table(["weights", "MiB", "held-out perplexity", "change"], rows)


def _serve(ctx: Context, r: dict) -> list[str]:
    return [
        f'`POST {r["url"]}` with `{{"prompt": "{r["prompt"]}", "max_tokens": 24}}` '
        f"and an API key answered in {r['latency_seconds']:.2f} s: `{r['completion']!r}` "
        f"(usage {r['usage']}).",
    ]


def _rag(ctx: Context, r: dict) -> list[str]:
    def listed(sources: list[dict]) -> str:
        return "<br>".join(f"[{s['index']}] `{s['source']}:{s['line']}`" for s in sources) or "–"

    rows = [
        [_cell(a["question"]), listed(a["sources"]), _cell(a["text"]) or "(empty)",
         listed(a["citations"])]
        for a in r["answers"]
    ]  # fmt: skip
    return [
        f"Knowledge base `{r['kb']}` ({r['chunks']:,} chunks, BM25); each question answered "
        f"greedily by the fine-tuned model `{r['model_dir']}` from its top sources, citations "
        "checked (dangling numbers removed, uncited sentences attributed when they share "
        "enough of a source's terms). The tiny model's text is noise (a short fine-tune often "
        "answers nothing at all); the sources show the retrieval:",
        "",
        *_table(["question", "sources in the prompt", "answer", "cited"], rows),
    ]


DETAILS: dict[str, Callable[[Context, dict], list[str]]] = {
    "dedup": _dedup,
    "tokenizer": _tokenizer,
    "pretrain": _pretrain,
    "sft": _sft,
    "evaluate": _evaluate,
    "generate": _generate,
    "quantize": _quantize,
    "serve": _serve,
    "rag": _rag,
}


def render(ctx: Context, stages: list[Stage]) -> str:
    done = [s for s in stages if s.name in ctx.results]
    results = [(s, ctx.results[s.name]) for s in done]
    total = sum(r.get("seconds", 0.0) for _, r in results)
    lines = [
        "# chuan quickstart",
        "",
        f"{len(done)} of {len(stages)} stages on the bundled sample, {total / 60:.1f} minutes "
        f"of stage time on {torch.get_num_threads()} CPU threads"
        + (" and a GPU" if torch.cuda.is_available() else "")
        + f". Output dir: `{ctx.out}`.",
        "",
        *_table(
            ["stage", "seconds", "result"],
            [
                [
                    s.title,
                    f"{ctx.results[s.name].get('seconds', 0.0):.1f}",
                    ctx.results[s.name]["summary"],
                ]
                for s in done
            ],
        ),
        "",
    ]
    for stage in done:
        if stage.name in DETAILS:
            lines += [
                f"## {stage.title}",
                "",
                *DETAILS[stage.name](ctx, ctx.results[stage.name]),
                "",
            ]
    lines += [
        "## Redo each stage by hand, at a larger scale",
        "",
        "```bash",
        *(s.rerun.format(out=ctx.out) for s in done),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_report(ctx: Context, stages: list[Stage]) -> Path:
    data = {"out": str(ctx.out), "stages": {name: r for name, r in ctx.results.items()}}
    return fileio.write_report(ctx.out, data, render(ctx, stages))
