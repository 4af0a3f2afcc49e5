"""The `chuan dpo` recipe: the fine-tuning recipe's keys, preference data, and the loss.

Defaults follow the papers: DPO's beta 0.1 (Rafailov et al. 2023, arXiv:2305.18290), SimPO's
beta 2.0 and gamma 0.5 (Meng et al. 2024, arXiv:2405.14734), ORPO's lambda 0.1 (Hong et al.
2024, arXiv:2403.07691, `beta` here), KTO's beta 0.1 and loss weights 1 (Ethayarajh et al.
2024, arXiv:2402.01306), and a constant learning rate of 1e-6 with Baichuan 2's fine-tuning
AdamW (0.9, 0.98).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from chuan.align.pair_config import PairConfig
from chuan.align.sft_config import SFTOptimConfig
from chuan.config import ConfigError, bounded, load_config

# Losses that compare against a frozen reference model, and those that need none.
REFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "kto")
REFERENCE_FREE_LOSSES = ("simpo", "orpo")


@dataclass
class DPOOptimConfig(SFTOptimConfig):
    lr: float = bounded(1e-6, gt=0)


@dataclass(kw_only=True)
class DPOConfig(PairConfig):
    """Everything one `chuan dpo` run needs; written back as `OUT/config.yaml`.

    `loss`: `sigmoid` (DPO; with `label_smoothing` > 0 the conservative cDPO), `ipo`, `hinge`
    (SLiC), `simpo` or `orpo` (the last two need no reference model), or `kto` (KTO, on
    unpaired answers labelled desirable or not; paired data is unpaired, each chosen answer
    desirable and each rejected one undesirable), whose losses `desirable_weight` and
    `undesirable_weight` scale (TRL advises w_d·n_d / (w_u·n_u) in [1, 4/3], for n_d
    desirable and n_u undesirable answers; a run outside it warns). `reference` is the
    frozen model dir the policy is compared with; by default the starting model (under LoRA:
    the same model with its adapter switched off, so no second copy is loaded).
    `precompute_reference` scores every pair with the reference once before training and
    keeps the numbers with the rows; on-the-fly scoring gives the same bits (each pair is
    scored alone either way). `sft_weight` adds that much of the chosen answers' token-mean
    NLL (RPO, Pang et al. 2024, arXiv:2404.19733).
    """

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"] = "sigmoid"
    beta: float | None = bounded(None, gt=0)
    label_smoothing: float = bounded(0.0, ge=0, lt=0.5)
    simpo_gamma: float = bounded(0.5, ge=0)
    desirable_weight: float = bounded(1.0, gt=0)
    undesirable_weight: float = bounded(1.0, gt=0)
    reference: str | None = None
    precompute_reference: bool = False
    sft_weight: float = bounded(0.0, ge=0)
    optim: DPOOptimConfig = field(default_factory=DPOOptimConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss in REFERENCE_FREE_LOSSES and (self.reference or self.precompute_reference):
            raise ConfigError(
                f"loss: {self.loss} uses no reference model; remove `reference` / "
                "`precompute_reference`"
            )
        if self.label_smoothing and self.loss != "sigmoid":
            raise ConfigError("label_smoothing (cDPO) applies to loss: sigmoid only")
        if self.loss != "kto" and (self.desirable_weight, self.undesirable_weight) != (1, 1):
            raise ConfigError("desirable_weight / undesirable_weight apply to loss: kto only")
        if self.loss == "kto" and self.sft_weight:
            raise ConfigError(
                "sft_weight trains on the chosen answers of pairs; loss: kto has no pairs "
                "(its undesirable answers must not be imitated); remove it"
            )

    @property
    def loss_beta(self) -> float:
        """`beta`, or the paper's default for the loss."""
        if self.beta is not None:
            return self.beta
        return {"simpo": 2.0, "orpo": 0.1}.get(self.loss, 0.1)


def load_dpo_config(path: str | Path | None, overrides: list[str] = ()) -> DPOConfig:
    """Read a recipe; relative paths are taken from the working dir."""
    return load_config(DPOConfig, path, overrides)
