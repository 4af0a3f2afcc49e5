"""The `chuan sft` recipe: the pretraining run's keys plus the fine-tuning ones.

Defaults are Baichuan 2's published fine-tuning settings (baichuan-inc/Baichuan2 README and
`fine-tune/fine-tune.py`): AdamW (0.9, 0.98), eps 1e-8, weight decay 1e-4, gradient clipping
1.0, a constant learning rate of 2e-5 with no warmup, `model_max_length` 512, and for LoRA
`target_modules=["W_pack"]`, r 1, alpha 32, dropout 0.1. AdaLoRA, prefix, prompt and
P-tuning keep peft's defaults (20 virtual tokens, as in peft's examples).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chuan.config import ConfigError, bounded, load_config
from chuan.tokenizer.chat_templates import DEFAULT_TEMPLATE, TEMPLATE_NAMES
from chuan.train.config import OptimConfig, RunConfig

# peft methods `chuan sft` trains beyond LoRA: AdaLoRA and the virtual-token methods
PROMPT_LEARNING_METHODS = ("prefix", "ptuning_v2", "prompt", "ptuning")
SFT_ONLY_METHODS = ("adalora", *PROMPT_LEARNING_METHODS)
# every `finetune` that trains a peft adapter (written to OUT/adapter)
ADAPTER_METHODS = ("lora", "qlora", *SFT_ONLY_METHODS)


@dataclass
class DataSource:
    """One SFT file: its format (detected when omitted) and its mixing weight.

    With weights, the stage's first source is taken whole and every other source gives
    `weight / first weight` samples per sample of the first (ChatHome's domain:general = 1:5
    is weights 1 and 5), drawn seeded without replacement, repeating only when a source is
    too small. Without weights the sources are concatenated.
    """

    path: str
    format: Literal["alpaca", "sharegpt", "messages", "colossal"] | None = None
    weight: float | None = bounded(None, gt=0)


@dataclass
class SFTStageConfig:
    """One stage: its data and its length (`steps`, else `epochs` passes over its rows)."""

    data: list[DataSource]
    name: str = ""
    steps: int | None = bounded(None, ge=1)
    epochs: float = bounded(1.0, gt=0)
    lr: float | None = bounded(None, gt=0)
    warmup_steps: int | None = bounded(None, ge=0)
    min_lr_ratio: float | None = bounded(None, ge=0, le=1)
    shuffle: bool = True


@dataclass
class SFTEvalConfig:
    """Held-out assistant loss: `holdout` conversations taken (seeded) out of the first
    stage's first source before mixing, or a data set of its own (`data`)."""

    data: list[DataSource] | None = None
    holdout: int = bounded(0, ge=0)
    every: int = bounded(0, ge=0)
    max_rows: int = bounded(64, ge=1)


@dataclass
class LoraConfig:
    """LoRA through `peft`; `targets: [all-linear]` adapts every linear layer of the blocks."""

    r: int = bounded(1, ge=1)
    alpha: float = bounded(32.0, gt=0)
    dropout: float = bounded(0.1, ge=0, lt=1)
    targets: list[str] = field(default_factory=lambda: ["W_pack"])
    use_dora: bool = False
    use_rslora: bool = False


@dataclass
class AdaLoraConfig:
    """AdaLoRA through `peft` (Zhang et al. 2023, arXiv:2303.10512): LoRA in SVD form whose
    rank budget moves, by importance, from `init_r` per layer towards an average `target_r`
    between step `tinit` and `total - tfinal`, every `deltaT` steps. Defaults are peft's."""

    init_r: int = bounded(12, ge=1)
    target_r: int = bounded(8, ge=1)
    tinit: int = bounded(0, ge=0)
    tfinal: int = bounded(0, ge=0)
    deltaT: int = bounded(1, ge=1)
    orth_reg_weight: float = bounded(0.5, ge=0)
    targets: list[str] = field(default_factory=lambda: ["W_pack"])


@dataclass
class PrefixConfig:
    """Prefix tuning (Li & Liang 2021, arXiv:2101.00190): `num_virtual_tokens` learned keys
    and values before every layer's attention; `projection` reparameterises them through an
    MLP while training, as the paper does. `finetune: ptuning_v2` (Liu et al. 2022,
    arXiv:2110.07602) is the same prefix without the projection."""

    num_virtual_tokens: int = bounded(20, ge=1)
    projection: bool = True


@dataclass
class PromptConfig:
    """Prompt tuning (Lester et al. 2021, arXiv:2104.08691): `num_virtual_tokens` learned
    input embeddings before every input; `init_text` starts them from that text's token
    embeddings (repeated to length), else random."""

    num_virtual_tokens: int = bounded(20, ge=1)
    init_text: str | None = None


@dataclass
class PTuningConfig:
    """P-Tuning (Liu et al. 2021, "GPT Understands, Too", arXiv:2103.10385): virtual input
    embeddings produced by a prompt encoder, `mlp` or `lstm`, of width `hidden` (the model's
    width when null), as peft's `PromptEncoder`."""

    num_virtual_tokens: int = bounded(20, ge=1)
    encoder: Literal["mlp", "lstm"] = "mlp"
    hidden: int | None = bounded(None, ge=1)


@dataclass
class FreezeConfig:
    """`finetune: freeze` trains the last `trainable_layers` blocks and the final norm."""

    trainable_layers: int = bounded(2, ge=1)


@dataclass
class SampleConfig:
    """Greedy replies to a few held-out prompts, before and after, for the report."""

    prompts: int = bounded(4, ge=0)
    max_new_tokens: int = bounded(64, ge=1)


@dataclass
class SFTOptimConfig(OptimConfig):
    """Baichuan 2's fine-tuning optimizer (a subclass, so that `optim: {lr: ...}` in a recipe
    keeps these defaults for the keys it does not name)."""

    lr: float = bounded(2e-5, gt=0)
    warmup_steps: int = bounded(0, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = bounded(1e-4, ge=0)
    grad_clip: float = bounded(1.0, ge=0)


@dataclass(kw_only=True)
class SFTConfig(RunConfig):
    """Everything one `chuan sft` run needs; written back as `OUT/config.yaml`."""

    model: str
    stages: list[SFTStageConfig]
    template: str = DEFAULT_TEMPLATE
    finetune: Literal[
        "full", "lora", "qlora", "freeze", "adalora", "prefix", "prompt", "ptuning", "ptuning_v2"
    ] = "full"
    lora: LoraConfig = field(default_factory=LoraConfig)
    adalora: AdaLoraConfig = field(default_factory=AdaLoraConfig)
    prefix: PrefixConfig = field(default_factory=PrefixConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    ptuning: PTuningConfig = field(default_factory=PTuningConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    neftune_alpha: float = bounded(0.0, ge=0)
    max_length: int = bounded(512, ge=8)
    packing: bool = True
    mask_history: bool = False
    optim: SFTOptimConfig = field(default_factory=SFTOptimConfig)
    eval: SFTEvalConfig = field(default_factory=SFTEvalConfig)
    samples: SampleConfig = field(default_factory=SampleConfig)

    def __post_init__(self) -> None:
        if self.template not in TEMPLATE_NAMES:
            raise ConfigError(
                f"template must be one of {', '.join(TEMPLATE_NAMES)}, got {self.template!r}"
            )
        if not self.stages:
            raise ConfigError("`stages` is empty; give at least one stage with its `data`")
        for i, stage in enumerate(self.stages):
            if not stage.data:
                raise ConfigError(f"stages.{i}.data is empty")
        if self.finetune == "adalora" and self.adalora.target_r > self.adalora.init_r:
            raise ConfigError(
                f"adalora.target_r ({self.adalora.target_r}) is above adalora.init_r "
                f"({self.adalora.init_r}): AdaLoRA only prunes ranks; raise init_r"
            )

    def refuse_sft_only_methods(self) -> None:
        """For the trainers built on this recipe (dpo, rm, ppo, grpo): the methods only
        `chuan sft` wires up are refused by name."""
        if self.finetune in SFT_ONLY_METHODS:
            raise ConfigError(
                f"finetune: {self.finetune} is supported by `chuan sft` only; preference and "
                "RL training take full, freeze, lora or qlora"
            )


def load_sft_config(path: str | Path | None, overrides: list[str] = ()) -> SFTConfig:
    """Read a recipe; relative paths are taken from the working dir."""
    return load_config(SFTConfig, path, overrides)
