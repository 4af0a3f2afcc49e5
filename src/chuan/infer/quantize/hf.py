"""The transformers side of a chuan-quantized dir: its `quantization_config` class and the
`HfQuantizer` that `AutoModelForCausalLM.from_pretrained` uses for `quant_method: "chuan"`.

`import chuan.infer.quantize` registers them (`register_with_transformers`).
"""

from __future__ import annotations

from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from chuan.infer.quantize.formats import QUANT_METHOD, QuantSpec
from chuan.infer.quantize.transform import swap_in_qlinears


class ChuanQuantizationConfig(QuantizationConfigMixin):
    """A chuan `quantization_config` as transformers sees it: the fields as stored."""

    def __init__(self, **fields):
        self.quant_method = QUANT_METHOD
        self.fields = {**fields, "quant_method": QUANT_METHOD}

    def to_dict(self) -> dict:
        return dict(self.fields)


class ChuanHfQuantizer(HfQuantizer):
    """Lets `AutoModelForCausalLM.from_pretrained` load (and `save_pretrained` write back) a
    chuan-quantized dir: the targets become `QLinear`s before the weights are read, so the
    codes and scales load by name. Without it transformers would warn and initialise the
    missing dense weights at random."""

    requires_calibration = True  # loads quantized dirs; quantizing is `chuan quantize`

    def _process_model_before_weight_loading(self, model, **kwargs) -> None:
        swap_in_qlinears(model, QuantSpec.from_config(self.quantization_config, "config.json"))

    def is_serializable(self, **kwargs) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return False


def register_with_transformers() -> None:
    """Register the config and quantizer under `quant_method: "chuan"` (once)."""
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantization_config(QUANT_METHOD)(ChuanQuantizationConfig)
        register_quantizer(QUANT_METHOD)(ChuanHfQuantizer)
