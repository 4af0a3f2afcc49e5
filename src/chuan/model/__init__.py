"""The Baichuan model family, registered with transformers' Auto classes on import."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from chuan.model.config import BaichuanConfig, swiglu_intermediate_size
from chuan.model.loss import LMLoss, chunked_lm_loss
from chuan.model.modeling import (
    BaichuanForCausalLM,
    BaichuanForSequenceClassification,
    BaichuanModel,
    NormHead,
)
from chuan.model.presets import PRESETS, parameter_count, preset_config, training_flops_per_token

AutoConfig.register(BaichuanConfig.model_type, BaichuanConfig, exist_ok=True)
AutoModel.register(BaichuanConfig, BaichuanModel, exist_ok=True)
AutoModelForCausalLM.register(BaichuanConfig, BaichuanForCausalLM, exist_ok=True)
AutoModelForSequenceClassification.register(
    BaichuanConfig, BaichuanForSequenceClassification, exist_ok=True
)

__all__ = [
    "PRESETS",
    "BaichuanConfig",
    "BaichuanForCausalLM",
    "BaichuanForSequenceClassification",
    "BaichuanModel",
    "LMLoss",
    "NormHead",
    "chunked_lm_loss",
    "parameter_count",
    "preset_config",
    "swiglu_intermediate_size",
    "training_flops_per_token",
]
