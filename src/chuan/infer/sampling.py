"""Choosing the next token: greedy or sampled, with per-sequence settings, over a batch.

The processors follow transformers' definitions, so settings carry over from a model's
`generation_config.json` unchanged:

- repetition penalty (CTRL): a logit of a token already in the sequence (prompt included) is
  divided by the penalty when positive and multiplied by it when negative;
- temperature divides the logits; top-k keeps the k largest; top-p keeps the smallest set of
  most likely tokens whose probability reaches p (always at least one), applied in that order;
- greedy (temperature 0) takes the arg-max after the repetition penalty, like transformers'
  `do_sample=False`.

Logits are processed in fp32: a half-precision softmax over a 125,696-token vocabulary
overflows into "probability tensor contains inf/nan" errors (baichuan-inc/Baichuan2#292,
#315). One known difference: top-k keeps exactly k tokens where transformers also keeps ties
with the k-th.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from chuan.errors import InputError

log = logging.getLogger(__name__)

# Baichuan 2 chat models' generation_config.json (Hugging Face repos
# `baichuan-inc/Baichuan2-{7B,13B}-Chat`), used for every field a model dir's own file does
# not set.
BAICHUAN2_CHAT_DEFAULTS = {
    "max_new_tokens": 2048,
    "temperature": 0.3,
    "top_k": 5,
    "top_p": 0.85,
    "repetition_penalty": 1.05,
    "stop_token_ids": (2,),
}


@dataclass
class SamplingConfig:
    """Decoding settings of one sequence; `temperature=0` means greedy (deterministic).

    `top_k=0` and `top_p=1` switch those filters off, `repetition_penalty=1` the penalty. A
    sequence ends at any of `stop_token_ids` (which is not returned) or after
    `max_new_tokens`. `seed` makes sampling reproducible, also inside a batch.
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop_token_ids: tuple[int, ...] = field(default=())
    seed: int | None = None

    def __post_init__(self) -> None:
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "at least 1"),
            ("temperature", self.temperature >= 0, "0 (greedy) or more"),
            ("top_k", self.top_k >= 0, "0 (off) or more"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("repetition_penalty", self.repetition_penalty > 0, "above 0"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise InputError(f"{name} must be {expected}, got {getattr(self, name)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def sampling_config_from_dict(data: dict) -> SamplingConfig:
    """A `SamplingConfig` from transformers `GenerationConfig` fields; a field that is absent
    takes Baichuan 2's chat default, and `do_sample: false` means greedy."""
    fields = dict(BAICHUAN2_CHAT_DEFAULTS)
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty"):
        if data.get(name) is not None:
            fields[name] = data[name]
    if data.get("do_sample") is False:
        fields["temperature"] = 0.0
    if "eos_token_id" in data:
        eos = data["eos_token_id"]
        fields["stop_token_ids"] = () if eos is None else tuple(_as_list(eos))
    return SamplingConfig(**fields)


def _as_list(value: int | Sequence[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


def eos_stop_ids(model_config) -> tuple[int, ...]:
    """A model config's `eos_token_id` (an id, a list or None) as stop ids."""
    eos = model_config.eos_token_id
    return () if eos is None else tuple(_as_list(eos))


def generation_defaults(model_dir: str | Path | None) -> SamplingConfig:
    """The sampling settings of a model dir's `generation_config.json`, field by field, with
    Baichuan 2's chat defaults (T 0.3, top-k 5, top-p 0.85, penalty 1.05, 2048 new tokens,
    stop at id 2) for what it leaves out, or for everything when there is no such file.

    Sampling is on by default, so outputs differ run to run unless a seed is set; the
    settings are logged because this surprises users (baichuan-inc/Baichuan2#396).
    """
    path = Path(model_dir) / "generation_config.json" if model_dir else None
    if path is None or not path.is_file():
        cfg, source = SamplingConfig(**BAICHUAN2_CHAT_DEFAULTS), "Baichuan 2 chat defaults"
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            cfg = sampling_config_from_dict(data)
        except (ValueError, TypeError) as err:
            raise InputError(f"{path}: {err}") from err
        source = str(path)
    log.info("generation settings from %s: %s", source, describe(cfg))
    return cfg


def describe(cfg: SamplingConfig) -> str:
    """A one-line summary of `cfg` for logs, e.g. `temperature=0.3 top_k=5 ...`."""
    return " ".join(f"{key}={value}" for key, value in asdict(cfg).items())


@dataclass
class FilterParams:
    """Per-row sampling settings as tensors `[rows]`, built once per batch."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor

    @classmethod
    def from_configs(cls, configs: Sequence[SamplingConfig], device: torch.device) -> FilterParams:
        def column(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(c, name) for c in configs], dtype=dtype, device=device)

        return cls(
            temperature=column("temperature", torch.float32),
            top_k=column("top_k", torch.long),
            top_p=column("top_p", torch.float32),
        )


def apply_repetition_penalty(
    logits: torch.Tensor, history: torch.Tensor, penalty: torch.Tensor
) -> torch.Tensor:
    """Penalise the tokens of `history` `[B, T]` in `logits` `[B, V]` by `penalty` `[B]`
    (transformers' `RepetitionPenaltyLogitsProcessor`); returns a new tensor."""
    scores = logits.gather(1, history)
    factor = penalty[:, None].to(scores.dtype)
    scores = torch.where(scores < 0, scores * factor, scores / factor)
    return logits.scatter(1, history, scores)


def candidate_tokens(
    logits: torch.Tensor, params: FilterParams
) -> tuple[torch.Tensor, torch.Tensor]:
    """Temperature, top-k and top-p for rows that sample: the surviving logits and their
    token ids, both `[B, m]` sorted by logit, filtered-out entries at -inf.

    Only `m` = the largest top-k (the whole vocabulary when a row has none) entries are
    sorted, so Baichuan's top-k 5 never sorts 125,696 logits.
    """
    scaled = logits.float() / params.temperature[:, None]
    vocab = scaled.shape[-1]
    top_k = torch.where(params.top_k > 0, params.top_k.clamp(max=vocab), vocab)
    values, ids = scaled.topk(int(top_k.max()), dim=-1)
    keep = torch.arange(values.shape[-1], device=values.device)[None] < top_k[:, None]
    values = values.masked_fill(~keep, float("-inf"))
    probs = values.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    keep &= mass_before < params.top_p[:, None]
    return values.masked_fill(~keep, float("-inf")), ids


def filter_logits(logits: torch.Tensor, params: FilterParams) -> torch.Tensor:
    """`logits` `[B, V]` after temperature, top-k and top-p, removed tokens at -inf: what
    transformers' warpers return for `do_sample=True`."""
    values, ids = candidate_tokens(logits, params)
    return torch.full_like(logits, float("-inf"), dtype=values.dtype).scatter_(1, ids, values)


class TokenChooser:
    """Picks one token per row from the last logits, each row with its own settings.

    Greedy rows take the arg-max; sampling rows draw from their filtered distribution with
    their own `torch.Generator` when seeded (the global RNG otherwise), so a seeded row
    draws the same tokens alone or in any batch. Rows without top-k and top-p (RL rollouts,
    plain temperature sampling) draw over the vocabulary in id order and skip the sort,
    which costs as much as the forward of a small model; whether a row sorts depends on its
    own settings only, so the batch still cannot change its draws.

    `generators` (one per row, from `row_generator`) lets rows keep their random state when
    the batch around them changes (the serving engine rebuilds the chooser as rows come and
    go); by default each seeded row starts a generator of its own.
    """

    def __init__(
        self,
        configs: Sequence[SamplingConfig],
        device: torch.device,
        generators: Sequence[torch.Generator | None] | None = None,
    ):
        if generators is None:
            generators = [row_generator(c.seed, device) for c in configs]
        self.penalty = torch.tensor([c.repetition_penalty for c in configs], device=device)
        self.penalize = any(c.repetition_penalty != 1.0 for c in configs)
        sampled = [i for i, c in enumerate(configs) if not c.greedy]
        filtered = [i for i in sampled if configs[i].top_k > 0 or configs[i].top_p < 1.0]
        self.groups = [
            _SampledRows(
                rows,
                [configs[i] for i in rows],
                [generators[i] for i in rows],
                device,
                sort=rows is filtered,
            )
            for rows in (filtered, [i for i in sampled if i not in filtered])
            if rows
        ]

    def choose(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Token ids `[B]` for fp32 `logits` `[B, V]`; `history` `[B, T]` holds every token
        each row has seen (for the repetition penalty)."""
        logits = logits.float()
        if self.penalize:
            logits = apply_repetition_penalty(logits, history, self.penalty)
        tokens = logits.argmax(-1)
        for group in self.groups:
            tokens[group.rows] = group.draw(logits[group.rows])
        return tokens


class _SampledRows:
    """Sampling rows of a batch that share a path: filtered (sorted candidates) or not."""

    def __init__(self, rows: list[int], configs, generators, device: torch.device, sort: bool):
        self.rows = rows
        self.sort = sort
        self.params = FilterParams.from_configs(configs, device)
        self.generators = generators

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """One token id per row of `logits` `[R, V]`."""
        if not self.sort:
            scaled = logits / self.params.temperature[:, None]
            return self._index(scaled, last=scaled.shape[-1] - 1)[:, 0]
        values, ids = candidate_tokens(logits, self.params)
        # The kept candidates are a prefix; rounding must never step past it.
        kept = torch.isfinite(values).sum(-1, keepdim=True)
        return ids.gather(1, self._index(values, last=kept - 1))[:, 0]

    def _index(self, values: torch.Tensor, last: torch.Tensor | int) -> torch.Tensor:
        """One index per row into `values` `[R, m]`, drawn from `softmax(values)` by inverting
        the CDF with one uniform number from each row's generator. Unlike `torch.multinomial`,
        the draw does not depend on `m`, which the other rows of a batch decide."""
        cdf = values.softmax(-1).cumsum(-1)
        uniform = torch.stack(
            [torch.rand((), generator=g, device=values.device) for g in self.generators]
        )
        index = torch.searchsorted(cdf, (uniform * cdf[:, -1])[:, None], right=True)
        return index.clamp(max=last) if isinstance(last, int) else torch.minimum(index, last)


def row_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A row's random state: its own generator when seeded, else None (the global RNG)."""
    return None if seed is None else torch.Generator(device=device).manual_seed(seed)
