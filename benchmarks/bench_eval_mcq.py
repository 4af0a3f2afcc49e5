"""Questions per second of `chuan eval mcq` against lm-evaluation-harness, same model, same data.

Both score the same questions with the same model object and the same few-shot prompts:

- C-Eval val (1,346 questions, 52 subjects) 5-shot from dev with the `baichuan` preset (the
  C-Eval default), or with `--task cmmlu` the CMMLU dev split (335 questions) 4-shot with the
  `cmmlu-official` preset: each question's demos are the other 4 of its subject;
- lm-evaluation-harness runs an lm-eval task per subject written here from the same files
  (JSONL with question, A-D, answer; C-Eval's dev rows in Baichuan's `shuffle(seed=123)`
  order, which lm-eval's `first_n` sampler then takes), with description, delimiters and
  `doc_to_text` set so that lm-eval builds the very prompt chuan builds (checked below), and
  its `HFLM` wrapping the model object chuan scores. lm-eval ranks the four letters by the
  log-likelihood of each letter as a continuation; for one-token letters that is the same
  argmax as chuan's first-token logits.

Reported: wall and CPU time and questions/s of each (everything after the model is loaded
once: reading the data, building prompts, scoring; lm-eval's includes building its tasks),
whether lm-eval's contexts equal chuan's prompts, the share of identical predictions, and both
tools' micro and macro accuracies.

The model is a random chuan model, `--size tiny` (the preset: 4 layers, hidden 128) or `small`
(8 layers, hidden 512), with a context of 4,096 so no prompt is cut (lm-eval cuts from the
left, chuan first drops demos), and a 3,000-piece tokenizer trained on Bible and Tatoeba text;
`--model DIR` scores a model dir instead. chuan runs the few-shot prefix a subject's questions
share once (a KV cache) and each question's own tokens per batch; lm-eval runs every prompt
whole (once per question: its four one-token continuations share the context).
Both run single-threaded by default (`--threads`): on a shared machine the wall time stretches
with other work and idle OpenMP threads spin on CPU time, so compare runs on an idle one.

    PYTHONPATH=src python benchmarks/bench_eval_mcq.py                    # C-Eval val
    PYTHONPATH=src python benchmarks/bench_eval_mcq.py --task cmmlu       # CMMLU dev
    PYTHONPATH=src python benchmarks/bench_eval_mcq.py --size small --subjects law logic
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import yaml

from chuan.eval import mcq_data, prompts
from chuan.eval.mcq import McqConfig, PromptEncoder, aggregate, evaluate_loaded
from chuan.fileio import write_atomic
from chuan.infer.loading import load_model, load_saved_tokenizer
from chuan.model import swiglu_intermediate_size
from chuan.model.checkpoint import init_model_dir
from chuan.tokenizer.train import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SPLITS = {"ceval": "val", "cmmlu": "dev"}
# CMMLU dev has 5 questions a subject, so 4 others are the demos (lm-eval refuses to ask more).
SHOTS = {"ceval": 5, "cmmlu": 4}
BATCH = 8
# A wide init makes a random model's letter logits depend on the prompt.
SIZES = {
    "tiny": {"initializer_range": 0.2},
    "small": {
        "hidden_size": 512,
        "intermediate_size": swiglu_intermediate_size(512),
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "initializer_range": 0.05,
    },
}


def build_model(work: Path, size: str) -> Path:
    """A random model with a real bilingual tokenizer and a 4,096-token context: the `tiny`
    preset, or `small` (hidden 512, 8 layers, 8 heads, about 25M parameters)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.corpus import write_jsonl
    from helpers.pretrain_fixtures import bible_documents

    pairs = (DATA / "text" / "parallel" / "tatoeba_cmn_eng.txt").read_text("utf-8-sig")
    docs = bible_documents(DATA, 2000) + [
        {"text": line.replace("\t", "\n")} for line in pairs.splitlines()[:3000]
    ]
    corpus = write_jsonl(work / "corpus.jsonl", docs)
    train_tokenizer(corpus, work / "tok", vocab_size=3000, progress=False)
    shape = SIZES[size]
    init_model_dir(
        work / "model",
        "tiny",
        tokenizer_dir=work / "tok",
        seed=11,
        max_position_embeddings=4096,
        **shape,
    )
    return work / "model"


class Timer:
    """Wall and CPU seconds (all threads of this process) from creation to `stop`. On a
    shared machine CPU time is the steadier measure: other work stretches wall time."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


# --- the same task for lm-evaluation-harness ---------------------------------------------------


def _write_jsonl(path: Path, items: list[mcq_data.McqItem]) -> str:
    rows = [
        {"question": i.question, **dict(zip("ABCD", i.choices, strict=True)), "answer": i.answer}
        for i in items
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return str(path)


def _lm_eval_prompt(task: str, header: str) -> dict:
    """Description, delimiters and doc_to_text that make lm-eval's prompt chuan's preset's:
    C-Eval (baichuan) header "…答案。\n" + ("\n" + demo) * k + "\n" + question;
    CMMLU (cmmlu-official) header "…选项。\n\n" + (demo + "\n\n") * k + question."""
    choices = "\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n"
    if task == "ceval":
        return {
            "description": header + "\n",
            "fewshot_delimiter": "\n",
            "doc_to_text": "{{question}}" + choices + "答案：",
        }
    return {
        "description": header,
        "fewshot_delimiter": "\n\n",
        "doc_to_text": "题目：{{question}}" + choices + "答案是：",
    }


def lm_eval_tasks(task: str, data: dict, dev: dict, out: Path) -> list[str]:
    """One lm-eval task per subject, asking the same questions with the same demos."""
    fmt = prompts.prompt_format(prompts.DEFAULT_PRESETS[task], task)
    names = []
    for subject, items in data.items():
        files = {
            "dev": _write_jsonl(
                out / f"{subject}_dev.jsonl", prompts.order_demos(fmt, dev[subject])
            )
        }
        if task == "ceval":  # val questions, dev demos; CMMLU asks dev itself
            files["val"] = _write_jsonl(out / f"{subject}_val.jsonl", items)
        name = f"bench_{task}_{subject}"
        config = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files},
            "test_split": SPLITS[task],
            "fewshot_split": "dev",
            "fewshot_config": {"sampler": "first_n"},
            "output_type": "multiple_choice",
            "doc_to_choice": ["A", "B", "C", "D"],
            "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
            "target_delimiter": "",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            **_lm_eval_prompt(task, fmt.header(subject)),
        }
        (out / f"{name}.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), "utf-8")
        names.append(name)
    return names


def run_lm_eval(model, tokenizer, task: str, data: dict, dev: dict, work: Path):
    """(Timer, predictions {(subject, index): letter}, contexts {(subject, index): text})."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    folder = work / "lm_eval_tasks"
    folder.mkdir(exist_ok=True)
    timer = Timer()
    names = lm_eval_tasks(task, data, dev, folder)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=BATCH)
    result = simple_evaluate(
        model=lm,
        tasks=names,
        num_fewshot=SHOTS[task],
        task_manager=TaskManager(include_path=str(folder)),
        log_samples=True,
        verbosity="ERROR",
    )
    timer.stop()
    preds, contexts = {}, {}
    for name, samples in result["samples"].items():
        subject = name.removeprefix(f"bench_{task}_")
        for sample in samples:
            key = (subject, sample["doc_id"])
            scores = [loglik for loglik, _ in sample["filtered_resps"]]
            preds[key] = "ABCD"[int(np.argmax(scores))]
            contexts[key] = sample["arguments"][0][0]
    return timer, preds, contexts


# --- chuan ---------------------------------------------------------------------------------


def run_chuan(model, tokenizer, setup: McqConfig):
    timer = Timer()
    result = evaluate_loaded(model, tokenizer, setup, progress=False, log=lambda _: None)
    timer.stop()
    return timer, {(p["subject"], p["index"]): p["pred"] for p in result["predictions"]}


def chuan_prompts(tokenizer, setup: McqConfig, data: dict, dev: dict) -> dict:
    """The prompt text chuan builds for every question (for the same-prompt check)."""
    fmt = prompts.prompt_format(prompts.DEFAULT_PRESETS[setup.task], setup.task)
    count = PromptEncoder(tokenizer).count
    texts = {}
    for subject, items in data.items():
        for item in items:
            demos = prompts.select_demos(fmt, item, dev[subject], setup.shots)
            prompt = prompts.build_prompt(fmt, item, demos, count, setup.max_length)
            texts[(subject, item.index)] = prompt.text
    return texts


def accuracies(task: str, data: dict, preds: dict) -> tuple[float, float]:
    correct = {s: [preds[(s, i.index)] == i.answer for i in items] for s, items in data.items()}
    summary = aggregate(task, correct, "micro")
    return summary["micro"], summary["macro"]


def _row(tool: str, timer: Timer, task: str, data: dict, preds: dict) -> dict:
    micro, macro = accuracies(task, data, preds)
    return {"tool": tool, "wall_s": timer.wall, "cpu_s": timer.cpu, "micro": micro, "macro": macro}


def measure(setup: McqConfig, model_dir: Path | None, size: str, work: Path) -> dict:
    """Both tools on the same model object and questions; their times, accuracies and how
    far their prompts and predictions agree."""
    data = mcq_data.load_split(setup.data_dir, setup.split, setup.subjects)
    dev = mcq_data.load_split(setup.data_dir, "dev", list(data))
    model_dir = model_dir or build_model(work, size)
    model, tokenizer = load_model(model_dir, device="cpu"), load_saved_tokenizer(model_dir)
    chuan_t, chuan_preds = run_chuan(model, tokenizer, setup)
    lm_t, lm_preds, contexts = run_lm_eval(model, tokenizer, setup.task, data, dev, work)
    ours = chuan_prompts(tokenizer, setup, data, dev)
    lm_name = f"lm-evaluation-harness {version('lm_eval')} (HFLM)"
    return {
        "task": setup.task,
        "split": setup.split,
        "shots": setup.shots,
        "subjects": len(data),
        "questions": len(chuan_preds),
        "rows": [
            _row("chuan eval mcq", chuan_t, setup.task, data, chuan_preds),
            _row(lm_name, lm_t, setup.task, data, lm_preds),
        ],
        "same_prompt": sum(contexts[k] == ours[k] for k in ours),
        "same_prediction": sum(lm_preds[k] == chuan_preds[k] for k in chuan_preds),
    }


def markdown(numbers: dict, threads: int) -> str:
    n = numbers["questions"]
    chuan, lm = numbers["rows"]
    lines = [
        f"{numbers['task']} {numbers['split']}, {numbers['shots']}-shot, preset "
        f"{prompts.DEFAULT_PRESETS[numbers['task']]}, {n:,} questions in "
        f"{numbers['subjects']} subjects; model {numbers['model']}; batch {BATCH}; "
        f"{threads} torch threads; "
        f"{platform.processor() or platform.machine()}, torch {torch.__version__}",
        "",
        "| tool | wall s | questions/s (wall) | CPU s | questions/CPU-s | micro acc | macro acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['tool']} | {r['wall_s']:.1f} | {n / r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
            f"{n / r['cpu_s']:.1f} | {r['micro']:.2f} | {r['macro']:.2f} |"
            for r in numbers["rows"]
        ),
        "",
        f"same prompt text: {numbers['same_prompt']}/{n}; same prediction: "
        f"{numbers['same_prediction']}/{n}; chuan's speed over lm-eval's: "
        f"{lm['wall_s'] / chuan['wall_s']:.1f}x by wall time, "
        f"{lm['cpu_s'] / chuan['cpu_s']:.1f}x by CPU time",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=sorted(SPLITS), default="ceval")
    parser.add_argument("--subjects", nargs="+", help="only these subjects (default: all)")
    parser.add_argument("--model", help="a model dir to score (default: a random model)")
    parser.add_argument(
        "--size", choices=sorted(SIZES), default="tiny", help="the random model (tiny)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)"
    )
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setup = McqConfig(
        args.task,
        str(DATA / "eval" / args.task),
        split=SPLITS[args.task],
        shots=SHOTS[args.task],
        subjects=tuple(args.subjects) if args.subjects else None,
        batch_size=BATCH,
        max_length=4096,
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else None
        numbers = measure(setup, model_dir, args.size, Path(tmp))
        numbers["model"] = args.model or f"random {args.size}"
    print(markdown(numbers, args.threads))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        write_atomic(args.json, json.dumps(numbers, indent=1) + "\n")


if __name__ == "__main__":
    main()
