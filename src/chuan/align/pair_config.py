"""What every preference command (`chuan dpo`, `chuan rm`) reads beyond the fine-tuning
recipe: stages and held-out sets of preference files, and pairs that are never packed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from chuan.align.sft_config import DataSource, SFTConfig, SFTEvalConfig, SFTStageConfig
from chuan.config import ConfigError


@dataclass
class PreferenceSource(DataSource):
    """One preference file, its layout (detected when omitted) and its mixing weight (as in
    `chuan sft`: the first source whole, the others `weight / first weight` per pair);
    `kto` is unpaired data, for `chuan dpo` with `loss: kto` only."""

    format: Literal["pairwise", "alpaca", "hh", "sharegpt", "colossal", "kto"] | None = None


@dataclass
class PreferenceStageConfig(SFTStageConfig):
    """One stage: its pairs and its length (`steps`, else `epochs` passes over the pairs)."""

    data: list[PreferenceSource]


@dataclass
class PreferenceEvalConfig(SFTEvalConfig):
    """Held-out pairs: `holdout` taken (seeded) out of the first stage's first source, or
    files of their own (`data`); at most `max_rows` pairs are scored."""

    data: list[PreferenceSource] | None = None


@dataclass(kw_only=True)
class PairConfig(SFTConfig):
    """The fine-tuning recipe with preference stages; each pair is two padded rows in one
    forward, so `packing` stays false, and only the last answer is scored."""

    stages: list[PreferenceStageConfig]
    packing: bool = False
    eval: PreferenceEvalConfig = field(default_factory=PreferenceEvalConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.refuse_sft_only_methods()
        if self.packing:
            raise ConfigError(
                "packing: true is not supported for preference pairs (each pair is two padded "
                "rows in one forward); remove it"
            )
        if self.mask_history:
            raise ConfigError(
                "mask_history: preference losses score only the last answer already; remove it"
            )
