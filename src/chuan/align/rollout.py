"""Rollouts: the policy answers a batch of prompts, and the answers are laid out for scoring.

Sampling is chuan's batched KV-cache generator (`chuan.infer.generate.BatchDecoder`) with
`record_logprobs`, so the log-probs of the sampled tokens come with them. Every completion
has its own seed, derived from (run seed, iteration, completion index): a rollout is a
function of the weights and those numbers alone, so a resumed run samples exactly what the
uninterrupted one did, with no generator state to save.

A rollout's rows are the prompt left-padded to the widest prompt and the completion
(its stop token included when it stopped) right-padded to the longest completion; segment
id 0 marks both paddings, so every row's positions start at 0 as in the generator. The
completion's logits are those at positions `P − 1 … P + R − 2` (position t predicts t + 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from chuan.infer.generate import STOP, BatchDecoder
from chuan.infer.sampling import SamplingConfig
from chuan.train.data import Batch, stack_rows


def completion_seed(seed: int, iteration: int, index: int) -> int:
    """A 63-bit seed for completion `index` of `iteration`, mixed by numpy's `SeedSequence`
    so that neighbouring triples give unrelated streams."""
    state = np.random.SeedSequence([seed, iteration, index]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


@dataclass
class Rollout:
    """`N` prompts with their completions, ready for teacher-forced scoring."""

    batch: Batch  # [N, P + R]
    prompt_width: int  # P
    response_ids: torch.Tensor  # [N, R], 0 on padding
    response_mask: torch.Tensor  # [N, R] float, 1 on completion tokens
    logprobs: torch.Tensor  # [N, R] the generator's log-probs, 0 on padding
    ended: torch.Tensor  # [N] bool: stopped at a stop token (not cut by max_new_tokens)
    completions: list[list[int]]  # the generated ids, stop token excluded

    @property
    def lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)

    def to(self, device: torch.device) -> Rollout:
        return Rollout(
            self.batch.to(device),
            self.prompt_width,
            self.response_ids.to(device),
            self.response_mask.to(device),
            self.logprobs.to(device),
            self.ended,
            self.completions,
        )

    def rows(self, index: slice | list[int]) -> Rollout:
        """The rollout of the rows `index` (a micro-batch)."""
        if isinstance(index, slice):
            index = list(range(*index.indices(len(self.completions))))
        take = torch.tensor(index, dtype=torch.long, device=self.response_ids.device)
        b = self.batch
        return Rollout(
            Batch.of(b.input_ids[take], b.segment_ids[take], b.labels[take]),
            self.prompt_width,
            self.response_ids[take],
            self.response_mask[take],
            self.logprobs[take],
            self.ended[take.cpu()],
            [self.completions[i] for i in index],
        )


@torch.no_grad()
def sample(model: nn.Module, prompts: list[list[int]], configs: list[SamplingConfig]) -> Rollout:
    """Sample one completion per prompt (each with its own config and seed)."""
    decoder = BatchDecoder(model, prompts, configs, record_logprobs=True)
    while not decoder.done:
        decoder.step()
    ended = [reason == STOP for reason in decoder.finish_reasons]
    responses = [list(tokens) for tokens in decoder.chosen]
    completions = [r[:-1] if stopped else r for r, stopped in zip(responses, ended, strict=True)]
    return assemble(prompts, responses, decoder.logprobs, ended, completions)


def assemble(
    prompts: list[list[int]],
    responses: list[list[int]],
    logprobs: list[list[float]],
    ended: list[bool],
    completions: list[list[int]],
) -> Rollout:
    """The padded rows of prompts and responses (see the module docstring)."""
    width = max(len(p) for p in prompts)
    left = [[p[0]] * (width - len(p)) + p for p in prompts]
    response_ids = stack_rows([r or [0] for r in responses], 0)
    mask = (
        torch.arange(response_ids.shape[1])[None]
        < torch.tensor([len(r) for r in responses])[:, None]
    ).float()
    response_ids = response_ids * mask.long()
    input_ids = torch.cat([torch.tensor(left, dtype=torch.long), response_ids], 1)
    prompt_segments = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long
    )
    segments = torch.cat([prompt_segments, mask.long()], 1)
    labels = torch.cat(
        [torch.full_like(prompt_segments, -100), response_ids.masked_fill(mask == 0, -100)], 1
    )
    logps = torch.zeros_like(mask)
    for row, values in enumerate(logprobs):
        logps[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
    return Rollout(
        Batch.of(input_ids, segments, labels),
        width,
        response_ids,
        mask,
        logps,
        torch.tensor(ended),
        completions,
    )


def _response_part(tensor: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """The positions whose outputs predict the response tokens: `P − 1 … P + R − 2`."""
    start = rollout.prompt_width - 1
    return tensor[:, start : start + rollout.response_ids.shape[1]]


def response_logps(
    model: nn.Module,
    rollout: Rollout,
    temperature: float,
    autocast: torch.dtype | None,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced `[N, R]` log-probs of the response tokens under `log_softmax(logits / T)`
    (0 on padding), and with `entropy` the per-token entropy of that distribution."""
    batch = rollout.batch
    with torch.autocast(batch.input_ids.device.type, dtype=autocast, enabled=autocast is not None):
        logits = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
        ).logits
    logits = _response_part(logits, rollout).float() / (temperature or 1.0)
    logps = logits.log_softmax(-1)
    chosen = logps.gather(-1, rollout.response_ids[..., None].to(logps.device))[..., 0]
    mask = rollout.response_mask.to(chosen.device)
    spread = None
    if entropy:
        with torch.no_grad():
            spread = -(logps.exp() * logps).sum(-1) * mask
    return chosen * mask, spread


def response_values(critic: nn.Module, rollout: Rollout, autocast: torch.dtype | None):
    """`[N, R]` values of the states before each response token (0 on padding): the critic's
    `score` head at every position."""
    batch = rollout.batch
    with torch.autocast(batch.input_ids.device.type, dtype=autocast, enabled=autocast is not None):
        values = critic(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, every_position=True
        ).logits[..., 0]
    values = _response_part(values, rollout).float()
    return values * rollout.response_mask.to(values.device)
