"""The `chuan pretrain` recipe: one YAML file, these dataclasses, `key=value` overrides.

Defaults are Baichuan 2's published pretraining settings (Baichuan 2 technical report,
arXiv:2309.10305, §2.6): AdamW (0.9, 0.95), weight decay 0.1 off the norms, gradient clipping
0.5, 2,000 linear warmup steps then cosine to 0.1 x the peak learning rate (the report gives no
floor; 0.1 is Colossal-LLaMA-2's), bf16 autocast over fp32 weights, max-z loss 2e-4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from chuan.config import ConfigError, bounded, load_config


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule (per stage; a stage may override `lr` and warmup)."""

    lr: float = bounded(2e-4, gt=0)
    min_lr_ratio: float = bounded(0.1, ge=0, le=1)
    warmup_steps: int = bounded(2000, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = bounded(1e-8, gt=0)
    weight_decay: float = bounded(0.1, ge=0)
    grad_clip: float = bounded(0.5, ge=0)


@dataclass
class StageConfig:
    """One stage: its data, its length, its schedule and which parameters train.

    Each stage starts a fresh optimizer and schedule from the weights the previous stage left,
    as Colossal-LLaMA-2 chains its stages. Length is `steps`, or `tokens` (rounded up to whole
    optimizer steps), or one pass over the data when neither is given.
    """

    data: list[str]
    name: str = ""
    buckets: list[int] | None = None
    steps: int | None = bounded(None, ge=1)
    tokens: int | None = bounded(None, ge=1)
    lr: float | None = bounded(None, gt=0)
    warmup_steps: int | None = bounded(None, ge=0)
    min_lr_ratio: float | None = bounded(None, ge=0, le=1)
    freeze: Literal["none", "non_embeddings"] = "none"
    shuffle: bool = True


@dataclass
class EvalConfig:
    """Held-out loss: a packed dataset of its own, or rows held back from the first stage's data."""

    data: str | None = None
    holdout_rows: int = bounded(0, ge=0)
    every: int = bounded(0, ge=0)
    max_rows: int = bounded(64, ge=1)


@dataclass
class CheckpointConfig:
    every: int = bounded(1000, ge=0)
    keep: int = bounded(3, ge=1)


@dataclass
class LogConfig:
    every: int = bounded(10, ge=1)
    tensorboard: bool = True
    progress: bool = True


@dataclass
class DistributedConfig:
    """`auto` = no wrapping in one process, FSDP2 (ZeRO-3-style) under torchrun."""

    strategy: Literal["auto", "none", "ddp", "fsdp"] = "auto"
    backend: str | None = None


@dataclass(kw_only=True)
class RunConfig:
    """What every training run shares (`chuan pretrain`, `chuan sft`): where it writes, its
    batch, precision, parallelism, optimizer, checkpoints and logging."""

    out: str
    seed: int = bounded(1234, ge=0)
    micro_batch_size: int = bounded(4, ge=1)
    grad_accum: int = bounded(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: str = "auto"
    activation_checkpointing: bool = False
    compile: bool = False
    peak_flops: float | None = bounded(None, gt=0)
    max_bad_steps: int = bounded(5, ge=0)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """Everything one `chuan pretrain` run needs; written back as `OUT/config.yaml`."""

    stages: list[StageConfig]
    model: str | None = None
    preset: str | None = None
    tokenizer: str | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    z_loss_weight: float | None = bounded(2e-4, ge=0)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if (self.model is None) == (self.preset is None):
            raise ConfigError(
                "give exactly one of `model` (a model dir) and `preset` (from scratch)"
            )
        if self.preset is not None and self.tokenizer is None:
            raise ConfigError("`preset` needs `tokenizer` (a tokenizer dir) for the vocabulary")
        if not self.stages:
            raise ConfigError("`stages` is empty; give at least one stage with its `data`")
        for i, stage in enumerate(self.stages):
            if not stage.data:
                raise ConfigError(f"stages.{i}.data is empty")
            if stage.steps is not None and stage.tokens is not None:
                raise ConfigError(f"stages.{i}: give `steps` or `tokens`, not both")


def load_pretrain_config(path: str | Path | None, overrides: list[str] = ()) -> PretrainConfig:
    """Read a recipe; relative data/model/tokenizer paths are taken from the working dir."""
    return load_config(PretrainConfig, path, overrides)
