"""Batched token-by-token generation with a preallocated KV cache.

`BatchDecoder` runs a batch of prompts of any lengths together: prompts are left-padded
(segment id 0, so padding is masked out and RoPE positions start at 0 in every row), the
whole batch is prefilled in one forward, and each `step()` feeds one token per row and asks
for the last position's logits only (`logits_to_keep=1`), so a 125,696-way head costs one
row per step. Every row has its own `SamplingConfig`, stops on its own stop ids or token
budget, and can be stopped by the caller (`finish`), which is what a server streaming to
several clients needs. A row gives the same tokens alone as in any batch.

With `record_logprobs=True` the decoder also keeps, per row, every token it chose (the stop
token included) and its log-probability under the row's temperature-scaled distribution
`log_softmax(logits / T)` (T = 1 for greedy rows), before top-k / top-p and the repetition
penalty: the policy log-probs RL needs for its rollouts (`chuan.align.rollout`), as TRL
computes them.

`stream_tokens` and `generate` are the one-call forms; `chuan.infer.sampling` holds the
processors and the generation defaults.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import torch
from transformers import PreTrainedModel

from chuan.errors import InputError
from chuan.infer.cache import KVCache
from chuan.infer.sampling import SamplingConfig, TokenChooser
from chuan.infer.virtual_tokens import virtual_tokens

__all__ = ["BatchDecoder", "SamplingConfig", "generate", "stream_tokens"]

# Why a row stopped: one of its stop ids, its max_new_tokens, or `BatchDecoder.finish`.
STOP, LENGTH, FINISHED = "stop", "length", "finished"


def _decode_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    cache: KVCache,
    shared_prefix: int = 0,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward through the cache; the fp32 logits `[B, V]` of each row's last position.
    `shared_prefix` counts the virtual tokens of a prompt-learning adapter (see
    `chuan.infer.virtual_tokens`); only chuan models take it, so it is passed only then."""
    extra = {"shared_prefix": shared_prefix} if shared_prefix else {}
    out = model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
        **extra,
    )
    return out.logits[:, -1]


@functools.cache
def _compiled_decode_logits():
    """`_decode_logits` under `torch.compile`, built once. Shapes are marked dynamic from the
    start because the cached length grows by one every step."""
    return torch.compile(_decode_logits, dynamic=True)


def _check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> None:
    if not prompts:
        raise InputError("no prompts given")
    if any(isinstance(p, int) for p in prompts):
        raise InputError("prompts must be a list of token-id lists: wrap one prompt as [ids]")
    for index, prompt in enumerate(prompts):
        if not prompt:
            raise InputError(f"prompt {index} is empty: give at least one token id (e.g. BOS)")
        bad = [t for t in prompt if not 0 <= t < vocab_size]
        if bad:
            raise InputError(
                f"prompt {index} has token ids outside the vocabulary (0..{vocab_size - 1}): "
                f"{bad[:5]}"
            )


def context_length(model: PreTrainedModel) -> int | None:
    """The model's context in tokens (`model_max_length`, else `max_position_embeddings`)."""
    config = model.config
    return getattr(config, "model_max_length", None) or getattr(
        config, "max_position_embeddings", None
    )


def _check_room(
    prompts: Sequence[Sequence[int]],
    configs: Sequence[SamplingConfig],
    context: int | None,
    virtual: int = 0,
) -> None:
    """Refuse a row whose prompt and token budget do not fit the model's context: positions
    past it were never trained (RoPE) or have no mask (ALiBi), so the output would be
    garbage. Nothing is cut silently; the message gives the numbers and the way out. An
    adapter's `virtual` tokens take their room first."""
    if context is None:
        return
    context -= virtual
    for index, (prompt, cfg) in enumerate(zip(prompts, configs, strict=True)):
        if len(prompt) + cfg.max_new_tokens <= context:
            continue
        name = "the prompt" if len(prompts) == 1 else f"prompt {index}"
        if len(prompt) >= context:
            raise InputError(
                f"{name} is {len(prompt)} tokens, which leaves no room in the model's "
                f"context of {context} tokens; shorten the prompt to under {context} tokens"
            )
        raise InputError(
            f"{name} ({len(prompt)} tokens) plus max_new_tokens {cfg.max_new_tokens} "
            f"is {len(prompt) + cfg.max_new_tokens} tokens, more than the model's context of "
            f"{context} tokens; lower max_new_tokens (--max-new-tokens) to at most "
            f"{context - len(prompt)} or shorten the prompt"
        )


class BatchDecoder:
    """Step-by-step decoding of a batch of prompts, each with its own settings.

    `__init__` left-pads and prefills; each `step()` returns one new token per row, or None
    for a row that has finished (a stop id, which is not returned, its `max_new_tokens`, or
    `finish`). `compile=True` runs the one-token decode forward under `torch.compile` (see
    docs/generate.md for when that pays off).

    `model` may be a peft prompt-learning model (prefix, prompt, P-tuning): its virtual
    tokens are computed once and the base model decodes after them, the prefix's keys and
    values as the start of the cache, prompt embeddings ahead of the prefill.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        prompts: list[list[int]],
        configs: list[SamplingConfig],
        *,
        compile: bool = False,
        record_logprobs: bool = False,
    ):
        _check_prompts(prompts, model.config.vocab_size)
        if len(configs) != len(prompts):
            raise InputError(f"{len(prompts)} prompts but {len(configs)} sampling configs")
        self._virtual = virtual_tokens(model)
        self._prefix = self._virtual.count if self._virtual else 0
        _check_room(prompts, configs, context_length(model), self._prefix)
        self.model = model.get_base_model() if self._virtual else model
        self.configs = list(configs)
        device = next(model.parameters()).device
        width = max(len(p) for p in prompts)
        capacity = width + max(c.max_new_tokens for c in configs)
        self._tokens = self._left_padded(prompts, width, capacity, device)
        self._segments = self._segment_ids(prompts, width, capacity, device, self._prefix)
        self._length = width
        self._cache = KVCache.for_model(self.model, self._prefix + capacity)
        self._chooser = TokenChooser(self.configs, device)
        self._forward = _compiled_decode_logits() if compile else _decode_logits
        self._generated = [0] * len(prompts)
        self.finish_reasons: list[str | None] = [None] * len(prompts)
        self._temperature = torch.tensor(
            [c.temperature or 1.0 for c in configs], dtype=torch.float32, device=device
        )[:, None]
        # With `record_logprobs`: each row's chosen tokens (its stop token included) and their
        # log-probabilities.
        self.chosen: list[list[int]] | None = [[] for _ in prompts] if record_logprobs else None
        self.logprobs: list[list[float]] | None = [[] for _ in prompts] if record_logprobs else None
        self._logits = self._prefill(width)
        self._fed = True

    def _prefill(self, width: int) -> torch.Tensor:
        """The prompts' forward, after the adapter's virtual tokens when there are any."""
        tokens = self._tokens[:, :width]
        virtual = self._virtual
        if virtual is None or virtual.key_values is not None:
            if virtual is not None:
                for layer, (keys, values) in enumerate(virtual.key_values):
                    batch = (tokens.shape[0], -1, -1, -1)
                    self._cache.update(keys.expand(batch), values.expand(batch), layer)
            return self._run(tokens, _decode_logits)
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(tokens)
            prompt = virtual.embeddings.expand(tokens.shape[0], -1, -1)
            return _decode_logits(
                self.model,
                None,
                self._mask(),
                self._cache,
                self._prefix,
                inputs_embeds=torch.cat((prompt, embeds), dim=1),
            )

    @staticmethod
    def _left_padded(
        prompts: list[list[int]], width: int, capacity: int, device: torch.device
    ) -> torch.Tensor:
        """`[B, capacity]` token buffer holding the prompts right-aligned at `width`.

        Padding repeats each row's first token: padded positions are masked out, so their ids
        never reach a real token, and a real id keeps them out of the repetition penalty.
        """
        rows = [[p[0]] * (width - len(p)) + list(p) for p in prompts]
        tokens = torch.zeros(len(prompts), capacity, dtype=torch.long, device=device)
        tokens[:, :width] = torch.tensor(rows, dtype=torch.long, device=device)
        return tokens

    @staticmethod
    def _segment_ids(
        prompts: list[list[int]], width: int, capacity: int, device: torch.device, prefix: int
    ) -> torch.Tensor | None:
        """Segment ids `[B, prefix + capacity]` (0 = padding, 1 = the sequence and the
        virtual tokens before it), or None when no row is padded, which lets the model take
        its unmasked causal path."""
        if all(len(p) == width for p in prompts):
            return None
        segments = torch.ones(len(prompts), prefix + capacity, dtype=torch.long, device=device)
        for row, prompt in enumerate(prompts):
            segments[row, prefix : prefix + width - len(prompt)] = 0
        return segments

    def _mask(self) -> torch.Tensor | None:
        if self._segments is None:
            return None
        return self._segments[:, : self._prefix + self._length]

    def _run(self, input_ids: torch.Tensor, forward) -> torch.Tensor:
        with torch.inference_mode():
            return forward(self.model, input_ids, self._mask(), self._cache, self._prefix)

    @property
    def done(self) -> bool:
        """Whether every row has finished."""
        return all(reason is not None for reason in self.finish_reasons)

    def finish(self, index: int) -> None:
        """Stop row `index` (a stop string was hit, the client went away); later steps give
        None for it. Finishing a finished row changes nothing."""
        if self.finish_reasons[index] is None:
            self.finish_reasons[index] = FINISHED

    def step(self) -> list[int | None]:
        """One new token per row (None for finished rows); all None once `done`."""
        if self.done:
            return [None] * len(self.configs)
        if not self._fed:
            last = self._tokens[:, self._length - 1 : self._length]
            self._logits = self._run(last, self._forward)
        with torch.inference_mode():
            chosen = self._chooser.choose(self._logits, self._tokens[:, : self._length])
        self._tokens[:, self._length] = chosen
        self._length += 1
        self._fed = False
        if self.chosen is not None:
            self._keep_logprobs(chosen)
        return [self._record(row, token) for row, token in enumerate(chosen.tolist())]

    def _keep_logprobs(self, chosen: torch.Tensor) -> None:
        """Append each running row's token and its log-probability."""
        scaled = self._logits.float() / self._temperature
        logps = scaled.log_softmax(-1).gather(1, chosen[:, None])[:, 0].tolist()
        for row, (token, logp) in enumerate(zip(chosen.tolist(), logps, strict=True)):
            if self.finish_reasons[row] is None:
                self.chosen[row].append(token)
                self.logprobs[row].append(logp)

    def _record(self, row: int, token: int) -> int | None:
        """Count `token` for `row` and return it, or None when the row is (now) finished."""
        if self.finish_reasons[row] is not None:
            return None
        cfg = self.configs[row]
        if token in cfg.stop_token_ids:
            self.finish_reasons[row] = STOP
            return None
        self._generated[row] += 1
        if self._generated[row] >= cfg.max_new_tokens:
            self.finish_reasons[row] = LENGTH
        return token


def stream_tokens(
    model: PreTrainedModel, prompt_ids: list[int], cfg: SamplingConfig, *, compile: bool = False
) -> Iterator[int]:
    """Yield the new token ids of one prompt as they are decoded (stop ids not included)."""
    decoder = BatchDecoder(model, [prompt_ids], [cfg], compile=compile)
    while not decoder.done:
        token = decoder.step()[0]
        if token is not None:
            yield token


def generate(
    model: PreTrainedModel,
    prompts: list[list[int]],
    cfg: SamplingConfig | list[SamplingConfig],
    *,
    compile: bool = False,
) -> list[list[int]]:
    """The new token ids of each prompt (prompt and stop ids excluded), decoded as one batch;
    `cfg` is one config for all prompts or one per prompt."""
    configs = list(cfg) if isinstance(cfg, list) else [cfg] * len(prompts)
    decoder = BatchDecoder(model, prompts, configs, compile=compile)
    outputs: list[list[int]] = [[] for _ in prompts]
    while not decoder.done:
        for row, token in enumerate(decoder.step()):
            if token is not None:
                outputs[row].append(token)
    return outputs
