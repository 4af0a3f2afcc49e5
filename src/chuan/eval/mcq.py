"""Multiple-choice evaluation (MMLU / CMMLU / C-Eval) by first-token logits (docs/eval.md).

For each question the preset's prompt is built (`chuan.eval.prompts`), and the model scores
the four letters by the logits of the **next token**: a raw forward pass (no repetition
penalty or other logits processor, unlike Baichuan's `generate(...).scores`), read in fp32.
Prediction = argmax over the four; ties go to the earliest letter (A before B ...).

Which token is "the letter" depends on the tokenizer, and the references disagree (`A` vs
`▁A`). chuan finds it *in context*: it tokenizes `prompt + separator + X` for X in A-D (the
separator is what the demos put before the letter, e.g. " " after "Answer:") and takes the
first position where the four differ; tokens shared before it (a lone `▁`) become part of the
scored context. (A vocabulary where the letters differ in shape there, `▁A` but no `▁D`, is
read on the bare letters after the separator instead.) A second reading, ColossalEval's, is
reported beside it: at the end of the prompt as written, each letter scores the max of two ids
(the last token of "Answer: X" and of "答案：X", i.e. `▁X` and `X` on LLaMA-style tokenizers).

Questions run in batches, longest first, and only the read positions go through the output
layer. For chuan models a subject's shared few-shot prefix is run once into a KV cache and each
batch runs only the questions' own tokens after it (right-padded; the mask is chuan's 2-D
segment ids, 0 = padding, so positions continue from the prefix); other models run whole
prompts, left-padded.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from chuan.errors import InputError, MissingError
from chuan.eval import mcq_data, prompts
from chuan.eval.mcq_data import LETTERS, McqItem
from chuan.eval.prompts import PromptFormat
from chuan.eval.subjects import (
    CEVAL,
    CEVAL_HARD,
    TASKS,
    category_names,
    known_subjects,
    subject_categories,
)
from chuan.fileio import write_atomic
from chuan.infer.cache import KVCache
from chuan.infer.chat import build_chat_input
from chuan.model import BaichuanForCausalLM

_NO_LIMIT = 2**62
# ColossalEval's two readings of each letter: the last token of these texts.
VARIANT_TEXTS = ("Answer: {}", "答案：{}")


@dataclass(frozen=True)
class PromptEncoder:
    """Turns prompt text into the ids the model sees: optional BOS, optional chat wrapping."""

    tokenizer: object
    bos_id: int | None = None
    chat: bool = False

    def text_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count(self, text: str) -> int:
        """Tokens `text` takes encoded alone (BOS included), as the presets' fit rules count."""
        return len(self.text_ids(text)) + (self.bos_id is not None)

    def overhead(self) -> int:
        """Tokens the chat wrapping adds around a prompt (0 without --chat)."""
        return len(self._chat([{"role": "user", "content": ""}])) if self.chat else 0

    def prompt_ids(self, prompt: str) -> list[int]:
        if self.chat:
            return self._chat([{"role": "user", "content": prompt}])
        return [self.bos_id] * (self.bos_id is not None) + self.text_ids(prompt)

    def answered_ids(self, prompt: str, separator: str, letter: str) -> list[int]:
        """The prompt followed by its answer, as a demo would write it (in chat: the letter is
        the assistant's reply)."""
        if self.chat:
            reply = {"role": "assistant", "content": letter}
            return self._chat([{"role": "user", "content": prompt}, reply])
        return self.prompt_ids(prompt + separator + letter)

    def _chat(self, messages: list[dict]) -> list[int]:
        # Baichuan 2's format: 195 + user text, then 196 (+ the reply). The builder must not
        # cut (chuan fits prompts by the preset's rule first), hence the unreachable limit.
        return build_chat_input(self.tokenizer, messages, 0, _NO_LIMIT)


@dataclass(frozen=True)
class Choice:
    """The forward input of one prompt and where to read it.

    `offset` / `variant_offset` count positions back from the last one (0 = last): the logits
    there predict the in-context letter token / ColossalEval's first generated token. `bare`
    marks the fallback to the bare letter pieces (see `choice_context`).
    """

    ids: list[int]
    choice_ids: tuple[int, int, int, int]
    offset: int
    variant_offset: int
    bare: bool = False


@dataclass(frozen=True)
class Request:
    """One question ready to score: its `Choice` (cut to the context) and how it was built."""

    item: McqItem
    choice: Choice
    shots: int
    cut: bool


@dataclass(frozen=True)
class Scored:
    """A question's in-context prediction and ColossalEval-variant prediction (letters)."""

    item: McqItem
    pred: str
    pred_variant: str


def _shared_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def choice_context(encoder: PromptEncoder, prompt: str, separator: str) -> Choice:
    """The scored input and the four letter tokens of one prompt.

    The choice ids are the tokens where `prompt + separator + X` first differ over X in A-D,
    when each letter is exactly one token there. When not (a vocabulary with `▁A` but no `▁D`
    puts `▁A` against a lone `▁` + `D`), all four are read as the bare pieces `A`-`D` after
    `prompt + separator`, so no letter is scored by a different kind of token. The variant
    reads the end of the prompt as tokenized alone.
    """
    prompt_ids = encoder.prompt_ids(prompt)
    answered = [encoder.answered_ids(prompt, separator, letter) for letter in LETTERS]
    split = min(_shared_prefix(answered[0], other) for other in answered[1:])
    bare = any(len(ids) != split + 1 for ids in answered)
    if bare:
        context = encoder.prompt_ids(prompt + separator)
        choice_ids = tuple(encoder.tokenizer.convert_tokens_to_ids(list(LETTERS)))
    else:
        context, choice_ids = answered[0][:split], tuple(ids[split] for ids in answered)
    unknown = {None, getattr(encoder.tokenizer, "unk_token_id", None)}
    if len(set(choice_ids) - unknown) < len(LETTERS):
        raise InputError(f"the letters A-D have no four distinct tokens after {prompt[-40:]!r}")
    if not context:
        raise InputError("the prompt encodes to no tokens, so there is no position to score")
    shared = _shared_prefix(prompt_ids, context)
    if shared == len(context):  # the prompt alone reaches as far as the context, or further
        ids, variant_end = prompt_ids, len(prompt_ids)
    elif shared == len(prompt_ids):  # the context adds shared tokens (e.g. a lone "▁")
        ids, variant_end = context, len(prompt_ids)
    else:  # the letter re-merges the prompt's last token: both readings use the context
        ids, variant_end = context, len(context)
    return Choice(ids, choice_ids, len(ids) - len(context), len(ids) - variant_end, bare)


def _cut(ids: list[int], fmt: PromptFormat, max_length: int) -> tuple[list[int], bool]:
    """Fit `ids` into `max_length` the preset's way: keep the end, or ColossalEval's first and
    last halves (leaving `fmt.reserve` tokens free)."""
    limit = max_length - fmt.reserve
    if len(ids) <= limit:
        return ids, False
    if fmt.overflow == "middle":
        half = limit // 2
        return ids[:half] + ids[-half:], True
    return ids[-limit:], True


def build_request(
    encoder: PromptEncoder,
    fmt: PromptFormat,
    item: McqItem,
    dev: Sequence[McqItem],
    shots: int,
    max_length: int,
) -> Request:
    """The prompt of `item` (demos from `dev`, fitted to `max_length`) as a `Request`."""
    demos = prompts.select_demos(fmt, item, dev, shots)
    budget = max_length - encoder.overhead()
    prompt = prompts.build_prompt(fmt, item, demos, encoder.count, budget)
    choice = choice_context(encoder, prompt.text, fmt.separator)
    ids, cut = _cut(choice.ids, fmt, max_length)
    return Request(item, dataclasses.replace(choice, ids=ids), prompt.shots, cut)


def variant_ids(encoder: PromptEncoder) -> list[tuple[int, int]]:
    """ColossalEval's two ids per letter: the last token of "Answer: X" and of "答案：X"."""
    return [
        tuple(encoder.text_ids(text.format(letter))[-1] for text in VARIANT_TEXTS)
        for letter in LETTERS
    ]


def _batches(requests: list[Request], batch_size: int) -> list[list[Request]]:
    """Longest first, so the first batch shows the worst memory use and the ETA is safe."""
    ordered = sorted(requests, key=lambda r: len(r.choice.ids), reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def _pad(rows: list[list[int]], pad_id: int, device: torch.device, *, left: bool):
    """`[B, width]` ids and a 0/1 mask (0 = padding), padded on the left or the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids.to(device), mask.to(device)


def _predictions(
    batch: list[Request], main: torch.Tensor, var: torch.Tensor, variant: list[tuple[int, int]]
) -> list[Scored]:
    """Argmax letters of both readings from the `[B, V]` logits at their two positions."""
    letter_ids = torch.tensor([r.choice.choice_ids for r in batch], device=main.device)
    in_context = main.float().gather(1, letter_ids)
    pairs = torch.tensor(variant, device=var.device)  # [4 letters, 2 ids]
    colossal = var.float()[:, pairs].amax(dim=-1)
    # torch.argmax returns the first maximum: ties go to the earliest letter.
    return [
        Scored(r.item, LETTERS[int(m)], LETTERS[int(v)])
        for r, m, v in zip(batch, in_context.argmax(-1), colossal.argmax(-1), strict=True)
    ]


@torch.no_grad()
def score_batch(
    model, batch: list[Request], variant: list[tuple[int, int]], pad_id: int
) -> list[Scored]:
    """Any causal LM: one forward over a left-padded batch, asking for the last positions'
    logits only (`logits_to_keep`)."""
    device = next(model.parameters()).device
    choices = [r.choice for r in batch]
    ids, mask = _pad([c.ids for c in choices], pad_id, device, left=True)
    keep = 1 + max(max(c.offset, c.variant_offset) for c in choices)
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    rows = torch.arange(len(batch), device=device)
    main = logits[rows, [keep - 1 - c.offset for c in choices]]
    var = logits[rows, [keep - 1 - c.variant_offset for c in choices]]
    return _predictions(batch, main, var, variant)


def _prefix_length(group: list[Request]) -> int:
    """Tokens every request of `group` starts with, short of the positions each one reads."""
    first = group[0].choice.ids
    shared = min(_shared_prefix(first, r.choice.ids) for r in group)
    reads = (len(r.choice.ids) - 1 - max(r.choice.offset, r.choice.variant_offset) for r in group)
    return min(shared, *reads)


@torch.no_grad()
def _prefix_keys_values(model, prefix: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's keys and values of `prefix`, computed once (batch 1)."""
    ids = torch.tensor([prefix], device=next(model.parameters()).device)
    cache = KVCache.for_model(model, len(prefix))
    model.model(input_ids=ids, past_key_values=cache, use_cache=True)
    return [(k, v) for k, v in zip(cache.keys, cache.values, strict=True)]


@torch.no_grad()
def score_batch_after_prefix(
    model,
    batch: list[Request],
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None,
    variant: list[tuple[int, int]],
    pad_id: int,
) -> list[Scored]:
    """chuan models: the batch's own tokens, right-padded, after a shared cached prefix
    (its keys and values per layer, batch 1; None = no prefix).

    The prefix is copied into a fresh cache per batch, so positions run on from it. No mask
    is passed: padding only follows a row's real tokens, and causal attention never lets a
    token see later ones, so the model takes its fast causal path. Only the read positions go
    through the output layer.
    """
    device = next(model.parameters()).device
    length = prefix[0][0].shape[2] if prefix else 0
    choices = [r.choice for r in batch]
    ids, _ = _pad([c.ids[length:] for c in choices], pad_id, device, left=False)
    cache = None
    if prefix:
        size = len(batch)
        cache = KVCache.for_model(model, length + ids.shape[1])
        for layer, (keys, values) in enumerate(prefix):
            cache.update(keys.expand(size, -1, -1, -1), values.expand(size, -1, -1, -1), layer)
    out = model.model(input_ids=ids, past_key_values=cache, use_cache=cache is not None)
    rows = torch.arange(len(batch), device=device)
    last = [len(c.ids) - length - 1 for c in choices]
    main = out.last_hidden_state[rows, [e - c.offset for e, c in zip(last, choices, strict=True)]]
    var = out.last_hidden_state[
        rows, [e - c.variant_offset for e, c in zip(last, choices, strict=True)]
    ]
    head = model.get_output_embeddings()
    return _predictions(batch, head(main), head(var), variant)


def _prefix_groups(requests: list[Request]) -> list[list[Request]]:
    """Questions that likely share a long prompt prefix: same subject, same number of demos."""
    groups: dict[tuple[str, int], list[Request]] = {}
    for r in requests:
        groups.setdefault((r.item.subject, r.shots), []).append(r)
    return list(groups.values())


def score_requests(
    model,
    requests: list[Request],
    variant: list[tuple[int, int]],
    *,
    batch_size: int,
    pad_id: int,
    share_prefix: bool | None = None,
    progress: bool = True,
) -> list[Scored]:
    """Score every request in batches; results come back in the requests' order.

    With `share_prefix` (default: for chuan models, which it needs) the few-shot prefix a
    subject's prompts share is run once and cached, and only each question's own tokens are
    run per batch, which is most of the work saved on 5-shot prompts. Otherwise every prompt
    runs whole, left-padded with a padding mask (any causal LM).
    """
    if share_prefix is None:
        share_prefix = isinstance(model, BaichuanForCausalLM)
    scored: dict[tuple[str, int], Scored] = {}
    groups = _prefix_groups(requests) if share_prefix else [requests]
    with tqdm(total=len(requests), desc="scoring", unit="q", disable=not progress) as bar:
        for group in groups:
            length = _prefix_length(group) if share_prefix else 0
            prefix = _prefix_keys_values(model, group[0].choice.ids[:length]) if length else None
            for batch in _batches(group, batch_size):
                if share_prefix:
                    results = score_batch_after_prefix(model, batch, prefix, variant, pad_id)
                else:
                    results = score_batch(model, batch, variant, pad_id)
                scored.update(((s.item.path, s.item.index), s) for s in results)
                bar.update(len(batch))
    return [scored[(r.item.path, r.item.index)] for r in requests]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _group_accuracy(members: list[str], correct: dict[str, list[bool]], headline: str) -> float:
    """Accuracy (%) of a group of subjects: over its questions (micro) or its subjects (macro)."""
    if headline == "micro":
        flat = [c for s in members for c in correct[s]]
        return 100 * _mean(flat)
    return _mean([100 * _mean(correct[s]) for s in members])


def aggregate(task: str, correct: dict[str, list[bool]], headline: str) -> dict:
    """Per-subject, per-category and overall accuracies (%) from per-question correctness.

    Categories and Avg(Hard) average the way the headline does (micro: over questions, as
    Hendrycks and ColossalEval; macro: over subjects, as CMMLU and the C-Eval paper). A
    CMMLU China-specific subject counts in two categories. Subjects the benchmark does not
    publish count in the overall means only.
    """
    subjects = {s: {"accuracy": 100 * _mean(c), "n": len(c)} for s, c in correct.items()}
    micro = _group_accuracy(list(correct), correct, "micro")
    macro = _group_accuracy(list(correct), correct, "macro")
    categories = {}
    for name in category_names(task):
        members = [s for s in correct if name in subject_categories(task, s)]
        if members:
            categories[name] = _group_accuracy(members, correct, headline)
    hard = [s for s in correct if s in CEVAL_HARD]
    avg_hard = _group_accuracy(hard, correct, headline) if task == CEVAL and hard else None
    return {
        "average": micro if headline == "micro" else macro,
        "micro": micro,
        "macro": macro,
        "categories": categories,
        "subjects": subjects,
        "avg_hard": avg_hard,
    }


@dataclass(frozen=True)
class McqConfig:
    """What to evaluate and how (everything but the model)."""

    task: str
    data_dir: str
    split: str | None = None
    shots: int = 5
    subjects: tuple[str, ...] | None = None
    preset: str | None = None
    chat: bool = False
    batch_size: int = 8
    max_length: int = 2048


def _load_questions(setup: McqConfig, log: Callable[[str], None]):
    """(split, questions, dev questions) with the choices explained in `log`."""
    split = setup.split or mcq_data.default_split(setup.data_dir)
    if not setup.split:
        found = mcq_data.available_splits(setup.data_dir)
        log(f"split: {split} (the first of test, val, dev present; found {', '.join(found)})")
    data = mcq_data.load_split(setup.data_dir, split, setup.subjects)
    mcq_data.require_answers(data, split)
    unknown = sorted(set(data) - set(known_subjects(setup.task)))
    if unknown:
        log(f"not {setup.task} subjects, so in no category (overall means only): {unknown}")
    dev = {}
    if setup.shots > 0:
        if "dev" not in mcq_data.available_splits(setup.data_dir):
            raise MissingError(
                f"{setup.shots}-shot prompts take their demos from {setup.data_dir}/dev, which "
                "has no CSV files; add it or pass --shots 0"
            )
        dev = data if split == "dev" else mcq_data.load_split(setup.data_dir, "dev", list(data))
        if split == "dev":
            log("demos: the dev split is being evaluated, so each question is left out of its own")
    return split, data, dev


def _encoder(tokenizer, fmt: PromptFormat, chat: bool) -> PromptEncoder:
    """BOS as the preset says (None: as the tokenizer's own `add_bos_token`, which is what the
    reference scripts got by calling the tokenizer with its defaults); none inside chat."""
    if chat:
        return PromptEncoder(tokenizer, None, chat=True)
    bos = fmt.bos if fmt.bos is not None else bool(getattr(tokenizer, "add_bos_token", False))
    if bos and tokenizer.bos_token_id is None:
        raise InputError(f"preset {fmt.preset} leads with BOS but the tokenizer has none")
    return PromptEncoder(tokenizer, tokenizer.bos_token_id if bos else None)


def context_limit(model, max_length: int) -> int:
    """`max_length`, or less when the model's config says it holds fewer positions."""
    config = getattr(model, "config", None)
    limit = getattr(config, "model_max_length", None) or getattr(
        config, "max_position_embeddings", None
    )
    return min(max_length, limit) if limit else max_length


def build_requests(
    encoder: PromptEncoder,
    fmt: PromptFormat,
    data: dict[str, list[McqItem]],
    dev: dict[str, list[McqItem]],
    shots: int,
    max_length: int,
    progress: bool = True,
) -> list[Request]:
    """Every question's `Request`, subject by subject in file order."""
    items = [item for subject in data for item in data[subject]]
    return [
        build_request(encoder, fmt, item, dev.get(item.subject, []), shots, max_length)
        for item in tqdm(items, desc="prompts", unit="q", disable=not progress)
    ]


def _prediction(s: Scored) -> dict:
    item = s.item
    return {"subject": item.subject, "index": item.index, "pred": s.pred, "answer": item.answer}


def _correct(scored: list[Scored], attr: str) -> dict[str, list[bool]]:
    correct: dict[str, list[bool]] = {}
    for s in scored:
        correct.setdefault(s.item.subject, []).append(getattr(s, attr) == s.item.answer)
    return correct


def evaluate_loaded(
    model,
    tokenizer,
    setup: McqConfig,
    *,
    model_name: str = "",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Evaluate a loaded model; returns the result dict that `--json` writes."""
    if setup.task not in TASKS:
        raise InputError(f"unknown task {setup.task!r}; choose one of: {', '.join(TASKS)}")
    if setup.shots < 0 or setup.batch_size < 1:
        raise InputError(
            f"--shots must be 0 or more and --batch-size 1 or more, got {setup.shots} and "
            f"{setup.batch_size}"
        )
    fmt = prompts.prompt_format(setup.preset or prompts.DEFAULT_PRESETS[setup.task], setup.task)
    split, data, dev = _load_questions(setup, log)
    max_length = context_limit(model, setup.max_length)
    if max_length < setup.max_length:
        log(f"max length: {max_length} (the model holds no more than that)")
    encoder = _encoder(tokenizer, fmt, setup.chat)
    requests = build_requests(encoder, fmt, data, dev, setup.shots, max_length, progress)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scored = score_requests(
        model,
        requests,
        variant_ids(encoder),
        batch_size=setup.batch_size,
        pad_id=pad_id,
        progress=progress,
    )
    run = {
        "preset": fmt.preset,
        "preset_version": prompts.PRESET_VERSION,
        "preset_source": prompts.SOURCES[fmt.preset],
        "split": split,
        "headline": fmt.headline,
        "model": model_name,
        "questions": len(scored),
        "chat": setup.chat,
        "bos": encoder.bos_id is not None,
        "max_length": max_length,
        "mean_shots": _mean([r.shots for r in requests]),
        "cut_prompts": sum(r.cut for r in requests),
        "bare_letter_prompts": sum(r.choice.bare for r in requests),
    }
    return _result(setup, fmt.headline, scored, run)


def _result(setup: McqConfig, headline: str, scored: list[Scored], run: dict) -> dict:
    """The result JSON: the required keys first, then how the run was made, then the
    ColossalEval reading's means and its agreement with the in-context one."""
    summary = aggregate(setup.task, _correct(scored, "pred"), headline)
    variant = aggregate(setup.task, _correct(scored, "pred_variant"), headline)
    agree = _mean([s.pred == s.pred_variant for s in scored])
    return {
        "task": setup.task,
        "shots": setup.shots,
        "average": summary["average"],
        "categories": summary["categories"],
        "subjects": summary["subjects"],
        "predictions": [_prediction(s) for s in scored],
        "micro": summary["micro"],
        "macro": summary["macro"],
        "avg_hard": summary["avg_hard"],
        **run,
        "max_variant": {
            **{k: variant[k] for k in ("average", "micro", "macro", "categories", "avg_hard")},
            "agreement": 100 * agree,
        },
    }


def evaluate_mcq(
    model_dir: str | Path,
    setup: McqConfig,
    *,
    device: str | None = None,
    dtype: str = "auto",
    json_out: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Load `model_dir` (`chuan.infer.loading`), evaluate, print the table, and with
    `json_out` write the result JSON and a markdown report beside it (atomically)."""
    from chuan.infer.loading import load_model, load_saved_tokenizer

    tokenizer = load_saved_tokenizer(model_dir)
    if tokenizer is None:
        raise MissingError(f"{model_dir} has no tokenizer files; MCQ prompts are text")
    model = load_model(model_dir, device=device, dtype=dtype)
    result = evaluate_loaded(
        model, tokenizer, setup, model_name=str(model_dir), progress=progress, log=log
    )
    table = render_report(result)
    log(table)
    if json_out is not None:
        write_atomic(json_out, json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        write_atomic(Path(json_out).with_suffix(".md"), table + "\n")
    return result


def _row(name: str, subjects: int, questions: int, accuracy: float | None) -> str:
    shown = "-" if accuracy is None else f"{accuracy:.2f}"
    return f"| {name} | {subjects} | {questions:,} | {shown} |"


def render_report(result: dict) -> str:
    """A markdown table: categories, overall micro and macro (the headline marked), C-Eval
    Avg(Hard), then the ColossalEval-variant line and every subject."""
    task, subjects = result["task"], result["subjects"]
    lines = [
        f"# {task} {result['split']}, {result['shots']}-shot, preset {result['preset']}",
        "",
        f"model: {result['model'] or '(in memory)'}; {result['questions']:,} questions in "
        f"{len(subjects)} subjects; mean demos {result['mean_shots']:.2f}; "
        f"{result['cut_prompts']} prompts cut to {result['max_length']} tokens; "
        f"{result['bare_letter_prompts']} scored on the bare letters (no one-token letter in "
        "context); "
        f"BOS {'on' if result['bos'] else 'off'}; chat {'on' if result['chat'] else 'off'}",
        "",
        "| category | subjects | questions | accuracy |",
        "|---|---:|---:|---:|",
    ]
    for name, accuracy in result["categories"].items():
        members = [s for s in subjects if name in subject_categories(task, s)]
        n = sum(subjects[s]["n"] for s in members)
        lines.append(_row(name, len(members), n, accuracy))
    total = sum(v["n"] for v in subjects.values())
    for kind in ("micro", "macro"):
        mark = " (headline)" if kind == result["headline"] else ""
        lines.append(_row(f"**average, {kind}{mark}**", len(subjects), total, result[kind]))
    if result["avg_hard"] is not None:
        hard = [s for s in subjects if s in CEVAL_HARD]
        n = sum(subjects[s]["n"] for s in hard)
        lines.append(_row("Avg(Hard)", len(hard), n, result["avg_hard"]))
    variant = result["max_variant"]
    lines += [
        "",
        f"ColossalEval reading (max over the ids of `X` and `▁X` at the prompt's end): "
        f"{variant['average']:.2f} ({result['headline']}); same prediction on "
        f"{variant['agreement']:.1f}% of questions.",
        "",
        "| subject | questions | accuracy |",
        "|---|---:|---:|",
        *(f"| {s} | {v['n']} | {v['accuracy']:.2f} |" for s, v in subjects.items()),
    ]
    return "\n".join(lines)
