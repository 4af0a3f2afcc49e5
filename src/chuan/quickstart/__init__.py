"""`chuan quickstart`: the whole flow on the bundled bilingual sample, in minutes on a CPU.

clean → dedup → tokenizer → pack → pretrain → sft → evaluate → generate → quantize → serve →
cited answers (rag), each stage calling the same library function as its `chuan` verb, then
`report.md` with every stage's numbers, the plots, and the commands that redo each stage by
hand at a larger scale.
"""

from __future__ import annotations

from pathlib import Path

from chuan.quickstart import data_stages, model_stages, rag_stage, train_stages
from chuan.quickstart.report import write_report
from chuan.quickstart.runner import QuickstartConfig, Stage, run_stages

SAMPLE = "src/chuan/assets/sample"
STAGES = [
    Stage(
        "corpus",
        "sample corpus",
        data_stages.corpus,
        "# your own corpus: JSONL / Parquet / txt files of text records, in place of {out}/raw",
    ),
    Stage(
        "clean",
        "clean",
        data_stages.clean,
        "chuan data clean {out}/raw --out {out}/clean --workers 8",
    ),
    Stage(
        "dedup",
        "dedup",
        data_stages.dedup,
        "chuan data dedup {out}/clean/shards --out {out}/dedup --threshold 0.8 --workers 8",
    ),
    Stage(
        "tokenizer",
        "tokenizer",
        data_stages.tokenizer,
        "chuan tokenizer train {out}/dedup/shards --vocab-size 125696 --out {out}/tokenizer",
    ),
    Stage(
        "pack",
        "pack",
        data_stages.pack,
        "chuan data pack {out}/dedup/shards --tokenizer {out}/tokenizer --max-length 4096 "
        "--out {out}/packed",
    ),
    Stage(
        "pretrain",
        "pretrain",
        train_stages.pretrain,
        "chuan pretrain --config configs/baichuan2-7b.yaml tokenizer={out}/tokenizer "
        "stages.0.data=[{out}/packed]   # under torchrun for FSDP2",
    ),
    Stage(
        "sft",
        "sft",
        train_stages.sft,
        "chuan sft --config configs/sft-tiny-cpu.yaml model={out}/pretrain/model "
        "out={out}/sft-recipe   # configs/baichuan2-7b-sft.yaml for Baichuan 2's full fine-tune",
    ),
    Stage(
        "evaluate",
        "evaluate",
        model_stages.evaluate,
        "chuan eval ppl {out}/pretrain/model --text {out}/heldout/heldout.jsonl --json ppl.json\n"
        "chuan eval mcq {out}/pretrain/model --task cmmlu --data DIR_OF_CMMLU --json cmmlu.json",
    ),
    Stage(
        "generate",
        "generate",
        model_stages.generate,
        "chuan generate {out}/pretrain/model --prompt '床前明月光，' --max-new-tokens 64\n"
        "chuan chat {out}/sft/model   # the fine-tuned chat model, or a released Baichuan 2 one",
    ),
    Stage(
        "quantize",
        "quantize",
        model_stages.quantize,
        "chuan quantize {out}/pretrain/model {out}/quantized-int4 --bits 4 --group-size 128 "
        "--eval-text HELD_OUT.txt\n"
        "chuan convert {out}/pretrain/model model.gguf --to gguf   # for llama.cpp",
    ),
    Stage(
        "serve",
        "serve",
        model_stages.serve,
        "chuan serve {out}/pretrain/model --port 8000 --api-key $CHUAN_API_KEY",
    ),
    Stage(
        "rag",
        "cited answers",
        rag_stage.rag,
        "chuan rag index {out}/raw --out {out}/kb\n"
        "chuan rag ask {out}/sft/model {out}/kb '《登鹳雀楼》是谁写的？'  # chat/serve --kb",
    ),
]


def run_quickstart(options: QuickstartConfig, echo=print) -> Path:
    """Run (or resume) every stage, then write `report.md` and `report.json`; returns the
    report's path."""
    ctx = run_stages(options, STAGES, echo=echo)
    report = write_report(ctx, STAGES)
    echo(f"report: {report}")
    return report


__all__ = ["STAGES", "QuickstartConfig", "run_quickstart"]
