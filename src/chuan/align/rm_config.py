"""The `chuan rm train` recipe: the fine-tuning recipe's keys, preference data, and the
Bradley–Terry loss's options.

The learning rate defaults to 1e-5 (InstructGPT trained its 6B reward model at 9e-6, Ouyang
et al. 2022, appendix C.2), constant, with Baichuan 2's fine-tuning AdamW (0.9, 0.98).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chuan.align.pair_config import PairConfig
from chuan.align.sft_config import SFTOptimConfig
from chuan.config import ConfigError, bounded, load_config


@dataclass
class RMOptimConfig(SFTOptimConfig):
    lr: float = bounded(1e-5, gt=0)


@dataclass(kw_only=True)
class RMConfig(PairConfig):
    """Everything one `chuan rm train` run needs; written back as `OUT/config.yaml`.

    `margin: true` subtracts each record's margin (`margin`, or `score_chosen −
    score_rejected`) inside the loss, as Llama 2's reward models do; records without one get
    none. `center_rewards` is TRL's `center_rewards_coefficient` (0.01 in Eisenstein et al.
    2023), a penalty on (r_c + r_r)² that keeps the scores near zero.
    """

    margin: bool = False
    center_rewards: float = bounded(0.0, ge=0)
    optim: RMOptimConfig = field(default_factory=RMOptimConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune == "qlora":
            raise ConfigError("finetune: qlora is not supported for reward models; use lora")
        if self.neftune_alpha:
            raise ConfigError("neftune_alpha: NEFTune is for generative fine-tuning; remove it")


def load_rm_config(path: str | Path | None, overrides: list[str] = ()) -> RMConfig:
    """Read a recipe; relative paths are taken from the working dir."""
    return load_config(RMConfig, path, overrides)
