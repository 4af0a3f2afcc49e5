"""The named few-shot prompt presets of `chuan eval mcq`, each reproducing the script named below.

Protocol choice moves scores by points (Baichuan2-7B-Base: MMLU 54.16 with the Hendrycks prompt,
46.97 with ColossalEval's), so every result records its preset. A preset says, per benchmark:
the header, how each demo and the asked question are written, what the demos put between
"Answer:" and the letter (the *separator*, used to find the choice tokens in context), the
order of the dev demos, how demos are dropped to fit the context, whether a BOS token leads,
and which mean is the headline.

- `hendrycks`: MMLU (the default). hendrycks/test, as Baichuan's `evaluate_mmlu.py` runs it.
- `baichuan`: C-Eval (the default), Baichuan-7B `evaluation/evaluate_zh.py`; MMLU = hendrycks.
- `cmmlu-official`: CMMLU (the default), haonan-li/CMMLU `src/mp_utils.py`.
- `colossal-2023`: all three, ColossalEval of Sept 2023 (one exam header per language).
- `colossal-2023-12`: all three, ColossalEval after PR #5169 (a header per subject).

Combinations without a reference implementation are refused rather than invented.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from chuan.errors import InputError
from chuan.eval.mcq_data import LETTERS, McqItem
from chuan.eval.subjects import CEVAL, CMMLU, MMLU, chinese_name

PRESET_VERSION = 1  # bump when a preset's text or rules change; recorded with every result
DEFAULT_PRESETS = {MMLU: "hendrycks", CEVAL: "baichuan", CMMLU: "cmmlu-official"}

# Baichuan's evaluate_zh.py names one C-Eval subject differently from subject_mapping.json.
_BAICHUAN_CEVAL_NAMES = {"mao_zedong_thought": "毛泽东思想和中国特色社会主义理论概论"}
_BAICHUAN_SHUFFLE_SEED = 123  # `dataset["dev"].shuffle(seed=123)` in evaluate_zh.py
_COLOSSAL_MAX_NEW_TOKENS = 32  # ColossalEval truncates prompts to leave room for these

Counter = Callable[[str], int]


@dataclass(frozen=True)
class PromptFormat:
    """How one preset writes one benchmark's prompts; see the module docstring."""

    preset: str
    task: str
    header: Callable[[str], str]  # subject -> text before the demos
    zero_shot_header: Callable[[str], str]  # subject -> text before a question with no demos
    query: Callable[[McqItem], str]  # the asked question, ending where the letter goes
    separator: str  # what the demos put between the query's end and the letter
    fit: str  # "drop-last" | "drop-longest" | "greedy": how demos give way to max_length
    demo_order: str  # "file" | "shuffled": the dev rows' order before the first k are taken
    bos: bool | None  # lead with BOS; None = as the tokenizer's own add_bos_token says
    headline: str  # "micro" | "macro"
    overflow: str  # "left" | "middle": how a prompt still too long after dropping is cut
    reserve: int = 0  # tokens kept free at the end when cutting (ColossalEval: 32)
    demo_tail: str = ""  # what follows each demo's letter

    def demo(self, item: McqItem) -> str:
        """A solved example: the query, the separator, the gold letter, the tail."""
        if item.answer is None:
            raise InputError(f"{item.path}:{item.line}: a few-shot demo needs an answer")
        return self.query(item) + self.separator + item.answer + self.demo_tail


@dataclass(frozen=True)
class Prompt:
    """A built prompt and how many demos it kept."""

    text: str
    shots: int


def _choices(item: McqItem) -> str:
    lines = (f"{letter}. {text}" for letter, text in zip(LETTERS, item.choices, strict=True))
    return "\n".join(lines)


def _hendrycks_subject(subject: str) -> str:
    """ " abstract algebra" for `abstract_algebra`: each word gets a leading space, so the header
    reads "about  abstract algebra" with two spaces, as in Hendrycks' code."""
    return "".join(" " + word for word in subject.split("_"))


def _colossal_mmlu_subject(subject: str) -> str:
    """ "High School US History": title-cased words, "us" upper-cased (ColossalEval)."""
    return " ".join("US" if word == "us" else word.title() for word in subject.split("_"))


def _hendrycks_header(subject: str) -> str:
    return (
        "The following are multiple choice questions (with answers) about "
        f"{_hendrycks_subject(subject)}.\n\n"
    )


def _hendrycks_query(item: McqItem) -> str:
    return f"{item.question}\n{_choices(item)}\nAnswer:"


def _hendrycks(preset: str) -> PromptFormat:
    return PromptFormat(
        preset=preset,
        task=MMLU,
        header=_hendrycks_header,
        zero_shot_header=_hendrycks_header,
        query=_hendrycks_query,
        separator=" ",
        demo_tail="\n\n",
        fit="drop-last",
        demo_order="file",
        bos=False,  # Baichuan loads the tokenizer with add_bos_token=False
        headline="micro",
        overflow="left",
    )


def _baichuan_ceval_header(subject: str) -> str:
    name = _BAICHUAN_CEVAL_NAMES.get(subject) or chinese_name(CEVAL, subject)
    return f"以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n"


def _baichuan_ceval() -> PromptFormat:
    return PromptFormat(
        preset="baichuan",
        task=CEVAL,
        header=_baichuan_ceval_header,
        zero_shot_header=_baichuan_ceval_header,
        query=lambda item: f"\n{item.question}\n{_choices(item)}\n答案：",
        separator="",
        fit="drop-last",
        demo_order="shuffled",
        bos=None,
        headline="macro",
        overflow="left",
    )


def _cmmlu_header(subject: str) -> str:
    return f"以下是关于{chinese_name(CMMLU, subject)}的单项选择题，请直接给出正确答案的选项。\n\n"


def _cmmlu_official() -> PromptFormat:
    return PromptFormat(
        preset="cmmlu-official",
        task=CMMLU,
        header=_cmmlu_header,
        zero_shot_header=_cmmlu_header,
        query=lambda item: f"题目：{item.question}\n{_choices(item)}\n答案是：",
        separator="",
        demo_tail="\n\n",
        fit="drop-longest",
        demo_order="file",
        bos=None,
        headline="macro",
        overflow="left",
    )


def _colossal_instruction(task: str, subject: str) -> str:
    """ColossalEval's per-subject instruction, used alone for zero-shot and as the 2023-12
    few-shot header."""
    if task == MMLU:
        return (
            f"The following is a single-choice question on {_colossal_mmlu_subject(subject)}. "
            "Answer the question by replying A, B, C or D."
        )
    if task == CMMLU:
        return f"以下是关于{chinese_name(CMMLU, subject)}的单项选择题，请直接给出正确答案的选项。"
    return f"以下是中国关于{chinese_name(CEVAL, subject)}考试的单项选择题，请选出其中的正确答案。"


_COLOSSAL_2023_HEADERS = {
    "English": "The following are answers for questions in an exam.\n\n",
    "Chinese": "以下是考试中各个问题的答案。\n\n",
}


def _colossal_few_shot_header(task: str, version: str, subject: str) -> str:
    """Sept 2023: one header per language; 2023-12: the subject's own."""
    if version == "2023":
        return _COLOSSAL_2023_HEADERS["English" if task == MMLU else "Chinese"]
    if task == MMLU:
        name = _colossal_mmlu_subject(subject)
        return f"The following are multiple choice questions (with answers) about {name}.\n\n"
    return _colossal_instruction(task, subject) + "\n\n"


def _colossal_query(task: str) -> Callable[[McqItem], str]:
    if task == MMLU:
        return lambda item: f"Question: {item.question}\n{_choices(item)}\nAnswer: "
    return lambda item: f"题目：{item.question}\n{_choices(item)}\n答案："


def _colossal(task: str, version: str) -> PromptFormat:
    return PromptFormat(
        preset=f"colossal-{version}",
        task=task,
        header=lambda subject: _colossal_few_shot_header(task, version, subject),
        zero_shot_header=lambda subject: _colossal_instruction(task, subject) + "\n\n",
        query=_colossal_query(task),
        separator="",
        demo_tail="\n\n",
        fit="greedy",
        demo_order="file",
        bos=True,
        headline="micro",
        overflow="middle",
        reserve=_COLOSSAL_MAX_NEW_TOKENS,
    )


_FORMATS: dict[str, dict[str, Callable[[], PromptFormat]]] = {
    "hendrycks": {MMLU: lambda: _hendrycks("hendrycks")},
    "baichuan": {MMLU: lambda: _hendrycks("baichuan"), CEVAL: _baichuan_ceval},
    "cmmlu-official": {CMMLU: _cmmlu_official},
    "colossal-2023": {t: (lambda t=t: _colossal(t, "2023")) for t in (MMLU, CMMLU, CEVAL)},
    "colossal-2023-12": {t: (lambda t=t: _colossal(t, "2023-12")) for t in (MMLU, CMMLU, CEVAL)},
}
PRESETS = tuple(_FORMATS)

SOURCES = {
    "hendrycks": "hendrycks/test evaluate.py as run by Baichuan-7B evaluation/evaluate_mmlu.py",
    "baichuan": "Baichuan-7B evaluation/evaluate_zh.py (C-Eval); evaluate_mmlu.py (MMLU)",
    "cmmlu-official": "haonan-li/CMMLU src/mp_utils.py",
    "colossal-2023": "ColossalEval 2023-09: one exam header per language",
    "colossal-2023-12": "ColossalEval after PR #5169 (2023-12): a header per subject",
}


def prompt_format(preset: str, task: str) -> PromptFormat:
    """The format of `preset` for `task`; an unknown or unsupported pair is a ValueError."""
    if preset not in _FORMATS:
        raise InputError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if task not in _FORMATS[preset]:
        usable = [name for name, tasks in _FORMATS.items() if task in tasks]
        raise InputError(
            f"preset {preset!r} has no {task} prompt (no reference implementation); "
            f"for {task} choose one of: {', '.join(usable)}"
        )
    return _FORMATS[preset][task]()


def order_demos(fmt: PromptFormat, dev: Sequence[McqItem]) -> list[McqItem]:
    """The dev rows in the order the preset takes them: file order, or Baichuan's
    `Dataset.shuffle(seed=123)` (a NumPy PCG64 permutation, as `datasets` draws it)."""
    if fmt.demo_order == "file":
        return list(dev)
    order = np.random.default_rng(_BAICHUAN_SHUFFLE_SEED).permutation(len(dev))
    return [dev[i] for i in order]


def select_demos(
    fmt: PromptFormat, item: McqItem, dev: Sequence[McqItem], shots: int
) -> list[McqItem]:
    """The first `shots` demos in the preset's order, never the asked question itself (which
    matters when the dev split is the one being evaluated)."""
    pool = [d for d in order_demos(fmt, dev) if (d.path, d.index) != (item.path, item.index)]
    return pool[:shots]


def build_prompt(
    fmt: PromptFormat, item: McqItem, demos: Sequence[McqItem], count: Counter, budget: int
) -> Prompt:
    """The prompt for `item` with as many of `demos` as the preset's fit rule keeps within
    `budget` tokens (`count(text)` = tokens of `text` encoded alone, as the reference counts)."""
    if not demos:
        return Prompt(fmt.zero_shot_header(item.subject) + fmt.query(item), 0)
    fit = {"drop-last": _fit_drop_last, "drop-longest": _fit_drop_longest, "greedy": _fit_greedy}
    return fit[fmt.fit](fmt, item, demos, count, budget)


def _fit_drop_last(fmt, item, demos, count, budget) -> Prompt:
    """Hendrycks / Baichuan: drop demos from the end while the whole prompt is too long."""
    header, query = fmt.header(item.subject), fmt.query(item)
    for k in range(len(demos), 0, -1):
        text = header + "".join(fmt.demo(d) for d in demos[:k]) + query
        if count(text) <= budget:
            return Prompt(text, k)
    return Prompt(fmt.zero_shot_header(item.subject) + query, 0)


def _fit_drop_longest(fmt, item, demos, count, budget) -> Prompt:
    """CMMLU: drop every longest demo while the demos' token sum reaches the budget left by
    header + question; if even those two do not fit, the question goes alone."""
    header, query = fmt.header(item.subject), fmt.query(item)
    fixed = count(header) + count(query)
    if fixed > budget:
        return Prompt(query, 0)
    texts = [fmt.demo(d) for d in demos]
    sized = [(t, count(t)) for t in texts]
    while sized and sum(n for _, n in sized) >= budget - fixed:
        longest = max(n for _, n in sized)
        sized = [(t, n) for t, n in sized if n != longest]
    return Prompt(header + "".join(t for t, _ in sized) + query, len(sized))


def _fit_greedy(fmt, item, demos, count, budget) -> Prompt:
    """ColossalEval: add demos in order while header + demos fit `budget` minus the question
    and its answer; if not even one fits, ColossalEval keeps the first anyway (and the
    middle cut then shortens the prompt), which is reproduced."""
    query = fmt.query(item)
    room = budget - count(query + (item.answer or ""))
    prefix, kept = fmt.header(item.subject), None
    for k, demo in enumerate(demos, start=1):
        prefix += fmt.demo(demo)
        if count(prefix) > room:
            break
        kept = (prefix, k)
    text, shots = kept or (prefix, 1)
    return Prompt(text + query, shots)
