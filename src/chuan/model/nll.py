"""Windowed next-token negative log-likelihood: the one scorer behind `chuan eval ppl`, the
quantization report and every other perplexity chuan prints.

A sequence of `n` tokens has `n - 1` next-token targets. Windows of `max_length` input tokens
start every `stride` tokens (Hugging Face's "perplexity of fixed-length models"), and each target
is scored in the first window that predicts it, so every target is scored exactly once; a target
in a later window sees at least `max_length - stride` earlier tokens besides its own input.
`stride == max_length` scores independent chunks (lm-evaluation-harness's rolling
loglikelihood). Unlike HF's recipe, a window's targets include the token after its last input,
so no token at a window boundary goes unscored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from chuan.errors import InputError
from chuan.model.loss import IGNORE_INDEX


@dataclass(frozen=True)
class Window:
    """Inputs `x[begin:end]` of a sequence (`x` = its tokens but the last) predict
    `y[begin:end]` (`y` = its tokens but the first); targets before `first` belong to an
    earlier window and are context only."""

    begin: int
    end: int
    first: int


def sliding_windows(targets: int, max_length: int, stride: int) -> list[Window]:
    """The windows that score `targets` next-token targets, each exactly once."""
    if max_length < 1 or not 1 <= stride <= max_length:
        raise InputError(
            f"need 1 <= stride <= max_length, got stride {stride}, max_length {max_length}"
        )
    windows: list[Window] = []
    begin = scored = 0
    while scored < targets:
        end = min(begin + max_length, targets)
        windows.append(Window(begin, end, scored))
        scored = end
        begin += stride
    return windows


def window_nats(
    model, sequences: Sequence[Sequence[int]], windows: Sequence[Window]
) -> list[float]:
    """Summed next-token loss (nats) of `windows[i]` of `sequences[i]`, in one right-padded
    forward pass.

    Right padding needs no attention mask: causal attention keeps real tokens from seeing the
    padding after them, and their positions are unchanged.
    """
    width = max(w.end - w.begin for w in windows)
    inputs = torch.zeros((len(windows), width), dtype=torch.long)
    targets = torch.full((len(windows), width), IGNORE_INDEX, dtype=torch.long)
    for row, (seq, w) in enumerate(zip(sequences, windows, strict=True)):
        window = torch.tensor(seq[w.begin : w.end + 1])
        inputs[row, : w.end - w.begin] = window[:-1]
        targets[row, w.first - w.begin : w.end - w.begin] = window[1 + w.first - w.begin :]
    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=inputs.to(device), use_cache=False).logits
    targets = targets.to(device)
    # One row at a time: the fp32 log-softmax of a whole batch would double the logits' memory.
    return [
        F.cross_entropy(
            logits[row].float(), targets[row], ignore_index=IGNORE_INDEX, reduction="sum"
        )
        .double()
        .item()
        for row in range(len(windows))
    ]


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def sequence_nats(
    model,
    sequences: Sequence[Sequence[int]],
    *,
    max_length: int,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> list[float]:
    """Summed NLL of every next-token target of each sequence (`len(seq) - 1` targets each),
    windows of similar length batched together (`batch_size` windows of up to `max_length`
    tokens: `batch_size * max_length * vocab * 4` bytes of logits)."""
    stride = max_length if stride is None else stride
    jobs = [
        (index, window)
        for index, seq in enumerate(sequences)
        for window in sliding_windows(len(seq) - 1, max_length, stride)
    ]
    jobs.sort(key=lambda job: job[1].end - job[1].begin)  # similar lengths: less padding
    totals = [0.0] * len(sequences)
    bar = tqdm(total=len(jobs), desc="perplexity", unit="window", disable=not progress)
    for batch in _batches(jobs, batch_size):
        nats = window_nats(model, [sequences[i] for i, _ in batch], [w for _, w in batch])
        for (index, _), value in zip(batch, nats, strict=True):
            totals[index] += value
        bar.update(len(batch))
    bar.close()
    return totals


def perplexity(model, ids: Sequence[int], *, max_length: int, stride: int | None = None) -> float:
    """exp(mean NLL) of one token sequence: every target after the first token, once."""
    if len(ids) < 2:
        raise InputError("perplexity needs at least 2 tokens")
    (nats,) = sequence_nats(model, [ids], max_length=max_length, stride=stride)
    return math.exp(nats / (len(ids) - 1))
