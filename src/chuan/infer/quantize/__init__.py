"""Weight-only int8 / int4 quantization of the five Linears per layer that Baichuan quantizes.

- `formats`: the targets, `QuantSpec`, the int8 / int4 schemes and their packing, `QLinear`
  (the module docstring describes the layout and the matmul paths).
- `transform`: target Linears -> `QLinear`, the NormHead folded, `quantize_model`,
  `model_from_state` and `load_quantized`.
- `hf`: the transformers quantizer for `quant_method: "chuan"`.
- `report`: weight memory per precision, `quantize_dir` and its report.

Importing this package registers the quantizer with transformers, so that
`AutoModelForCausalLM.from_pretrained` loads a `chuan quantize` dir.
"""

from chuan.infer.quantize.formats import (
    BITS,
    DEFAULT_GROUP_SIZE,
    DEQUANT_BLOCK,
    FORMAT_VERSION,
    INT4_SCALE_DTYPE,
    KERNEL_GROUP_SIZES,
    KERNEL_MAX_ROWS,
    QUANT_METHOD,
    TARGET_MODULES,
    QLinear,
    QuantSpec,
    pack_int4,
    quantize_int4,
    quantize_int8,
    unpack_int4,
)
from chuan.infer.quantize.hf import (
    ChuanHfQuantizer,
    ChuanQuantizationConfig,
    register_with_transformers,
)
from chuan.infer.quantize.report import (
    PUBLISHED_GIB,
    QuantizeReport,
    linear_shapes,
    memory_table,
    quantize_dir,
    quantized_linear_bytes,
    render_memory_table,
    render_report,
    weight_bytes,
    write_report,
)
from chuan.infer.quantize.transform import (
    load_quantized,
    model_from_state,
    quantize_model,
    swap_in_qlinears,
)

register_with_transformers()

__all__ = [
    "BITS",
    "DEFAULT_GROUP_SIZE",
    "DEQUANT_BLOCK",
    "FORMAT_VERSION",
    "INT4_SCALE_DTYPE",
    "KERNEL_GROUP_SIZES",
    "KERNEL_MAX_ROWS",
    "PUBLISHED_GIB",
    "QUANT_METHOD",
    "TARGET_MODULES",
    "ChuanHfQuantizer",
    "ChuanQuantizationConfig",
    "QLinear",
    "QuantSpec",
    "QuantizeReport",
    "model_from_state",
    "linear_shapes",
    "load_quantized",
    "memory_table",
    "pack_int4",
    "quantize_dir",
    "quantize_int4",
    "quantize_int8",
    "quantize_model",
    "quantized_linear_bytes",
    "register_with_transformers",
    "render_memory_table",
    "render_report",
    "swap_in_qlinears",
    "unpack_int4",
    "weight_bytes",
    "write_report",
]
