"""Weight-only int8 / int4 quantization of the five Linears per layer that Baichuan quantizes.

Targets are `W_pack`, `o_proj`, `gate_proj`, `up_proj` and `down_proj`, as in the `quantizer.py`
of the Hugging Face repos `baichuan-inc/Baichuan2-{7B,13B}-Chat`; the embeddings, the norms and
the output head stay in floating point. A NormHead is folded into a plain head (rows normalised
once, in fp32) because its forward is `linear(h, normalize(W))` either way and a NormHead would
keep a second normalised copy in memory.

Schemes (activations are never quantized):

- int8: symmetric per output channel, `scale = max|W_row| / 127` (fp32), `q in [-127, 127]`.
- int4: asymmetric min-max per group of `group_size` inputs, `scale = (max - min) / 15`,
  `q = round((w - min) / scale) in [0, 15]`, `w ~ q * scale + min`; scale and min in bf16,
  two codes per byte along the input dim (low nibble = even column). Asymmetric because a
  group's 16 levels then span exactly its range (a symmetric grid leaves one level unused and
  half the grid empty on skewed groups); it is also the float-zero-point layout of PyTorch's
  int4 kernel (`zero = min + 8 * scale`).

`QLinear` keeps only this portable layout (what is saved). Its forward takes whichever path
measured faster (`benchmarks/bench_quantize.py`, Baichuan2-7B shapes, AVX-512 CPU): PyTorch's
weight-only CPU kernels for bf16 inputs of up to 16 (int8) or 128 (int4) rows, which makes a
bf16 decode step 2-7x faster than a dense bf16 matmul; otherwise dequantize + dense matmul.
On the CPU the dequantization runs in fp32, in blocks of output rows small enough to stay in
cache, which brings int8 in fp32 to within about 2x of dense fp32 (dequantizing a whole
4096x4096 matrix first is 10-20x slower, and PyTorch's fp32 kernels are scalar loops). The
int4 CPU kernel wants its own ISA-specific packing: it is built on the first bf16 decode step
and kept beside the codes (so bf16 int4 on the CPU holds the codes twice).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm
from transformers.quantizers import HfQuantizer, register_quantization_config, register_quantizer
from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING
from transformers.utils.quantization_config import QuantizationConfigMixin

from chuan.errors import InputError
from chuan.fileio import write_atomic
from chuan.model.checkpoint import read_config_dict, read_state_dict, write_model_dir
from chuan.model.config import BaichuanConfig
from chuan.model.convert import llama_to_baichuan
from chuan.model.modeling import BaichuanForCausalLM, NormHead
from chuan.model.presets import parameter_count, preset_config

QUANT_METHOD = "chuan"
FORMAT_VERSION = 1
TARGET_MODULES = ("W_pack", "o_proj", "gate_proj", "up_proj", "down_proj")
BITS = (8, 4)
DEFAULT_GROUP_SIZE = 128
INT4_SCALE_DTYPE = torch.bfloat16
# PyTorch's int4 kernel accepts these group sizes only.
KERNEL_GROUP_SIZES = (32, 64, 128, 256)
# Bits -> inputs of up to this many rows use the CPU kernels, in bf16 only (measured crossover
# with dequantize-in-blocks at Baichuan2-7B shapes: int8 about 24 rows, int4 about 200).
KERNEL_MAX_ROWS = {8: 16, 4: 128}
# Elements dequantized at a time on the CPU (4 MiB of fp32).
DEQUANT_BLOCK = 1 << 20
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
# Baichuan 2 README, "Quantization Deployment" (GB; they are GiB: 7.5e9 bf16 params = 14.0).
PUBLISHED_GIB = {
    "Baichuan2-7B": {"bf16": 14.0, "int8": 8.0, "int4": 5.1},
    "Baichuan2-13B": {"bf16": 25.9, "int8": 14.2, "int4": 8.6},
}
_GIB = 1024**3


@dataclass(frozen=True)
class QuantSpec:
    """What `chuan quantize` did, as stored in `config.json["quantization_config"]`."""

    bits: int
    group_size: int | None = None  # int4 only; int8 is per output channel
    modules: tuple[str, ...] = TARGET_MODULES

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise InputError(f"bits must be 8 or 4, got {self.bits}")
        if self.bits == 8 and self.group_size is not None:
            raise InputError("int8 is per output channel: --group-size applies to --bits 4 only")
        if self.bits == 4 and (
            self.group_size is None or self.group_size < 2 or self.group_size % 2
        ):
            raise InputError(f"int4 needs an even group size >= 2, got {self.group_size}")
        unknown = set(self.modules) - set(TARGET_MODULES)
        if unknown:
            raise InputError(f"cannot quantize {sorted(unknown)}; targets are {TARGET_MODULES}")

    @property
    def scheme(self) -> str:
        if self.bits == 8:
            return "int8 symmetric per-output-channel absmax (scale = max|W_row| / 127)"
        return f"int4 asymmetric min-max per group of {self.group_size} inputs"

    def to_config(self) -> dict:
        return {
            "quant_method": QUANT_METHOD,
            "format_version": FORMAT_VERSION,
            "bits": self.bits,
            "group_size": self.group_size,
            "modules": list(self.modules),
            "scheme": self.scheme,
            "norm_head_folded": True,
        }

    @classmethod
    def from_config(cls, quant, where: str | Path) -> QuantSpec:
        """Parse and check a `quantization_config` (a dict, or transformers' object for it);
        `where` names the file in errors."""
        if hasattr(quant, "to_dict"):
            quant = quant.to_dict()
        if not quant or quant.get("quant_method") != QUANT_METHOD:
            raise InputError(f"{where}: quantization_config.quant_method is not {QUANT_METHOD!r}")
        if quant.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise InputError(
                f"{where}: quantization_config.format_version {quant['format_version']} is newer "
                f"than this chuan reads ({FORMAT_VERSION}); upgrade chuan"
            )
        try:
            return cls(int(quant["bits"]), quant.get("group_size"), tuple(quant["modules"]))
        except KeyError as err:
            raise InputError(f"{where}: quantization_config has no field {err}") from None
        except ValueError as err:
            raise InputError(f"{where}: quantization_config: {err}") from None


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """`[N, K]` codes in 0..15 -> `[N, K/2]` uint8, column 2j in the low nibble."""
    if codes.shape[-1] % 2:
        raise InputError(f"int4 packing needs an even number of columns, got {codes.shape[-1]}")
    if codes.numel() and (codes.min() < 0 or codes.max() > 15):
        raise InputError("int4 codes must lie in 0..15")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of `pack_int4`: `[N, K/2]` uint8 -> `[N, K]` uint8 codes."""
    return torch.stack((packed & 15, packed >> 4), dim=-1).flatten(-2)


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row absmax: int8 codes `[N, K]` and fp32 scales `[N]`."""
    w = weight.float()
    scales = w.abs().amax(dim=1) / 127
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = (w / safe[:, None]).round().clamp(-127, 127).to(torch.int8)
    return codes, scales


def quantize_int4(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric min-max per input group: packed codes `[N, K/2]`, bf16 scales and mins
    `[N, K/group_size]`. Codes are rounded against the bf16-rounded scale and min, so that
    dequantizing the stored values is what was optimised."""
    n, k = weight.shape
    if k % group_size:
        raise InputError(f"input size {k} is not a multiple of the int4 group size {group_size}")
    w = weight.float().view(n, k // group_size, group_size)
    low, high = w.amin(dim=-1), w.amax(dim=-1)
    scales = ((high - low) / 15).to(INT4_SCALE_DTYPE)
    mins = low.to(INT4_SCALE_DTYPE)
    step = scales.float()
    step = torch.where(step > 0, step, torch.ones_like(step))
    codes = ((w - mins.float()[..., None]) / step[..., None]).round().clamp(0, 15)
    return pack_int4(codes.view(n, k)), scales, mins


class QLinear(nn.Module):
    """A bias-free Linear with int8 or packed-int4 weights (buffers `qweight`, `scales` and,
    for int4, `mins`); see the module docstring for the layout and the matmul paths."""

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = spec.bits, spec.group_size
        if spec.bits == 8:
            self.register_buffer(
                "qweight", torch.empty(out_features, in_features, dtype=torch.int8)
            )
            self.register_buffer("scales", torch.empty(out_features))
        else:
            if in_features % spec.group_size:
                raise InputError(
                    f"input size {in_features} is not a multiple of the int4 group size "
                    f"{spec.group_size}"
                )
            groups = (out_features, in_features // spec.group_size)
            self.register_buffer(
                "qweight", torch.empty(out_features, in_features // 2, dtype=torch.uint8)
            )
            self.register_buffer("scales", torch.empty(groups, dtype=INT4_SCALE_DTYPE))
            self.register_buffer("mins", torch.empty(groups, dtype=INT4_SCALE_DTYPE))
        self._int4_kernel_cache: tuple | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec) -> QLinear:
        if linear.bias is not None:
            raise InputError("QLinear supports bias-free Linears only (Baichuan has no biases)")
        with torch.device(linear.weight.device):
            module = cls(linear.in_features, linear.out_features, spec)
        weight = linear.weight.detach()
        if spec.bits == 8:
            module.qweight, module.scales = quantize_int8(weight)
        else:
            module.qweight, module.scales, module.mins = quantize_int4(weight, spec.group_size)
        return module

    def dequantize(
        self, dtype: torch.dtype = torch.float32, rows: slice = slice(None)
    ) -> torch.Tensor:
        """The `[out, in]` weight this module computes with (or its output rows `rows`).
        On the CPU the arithmetic runs in fp32 (CPUs do bf16/fp16 elementwise math slowly)."""
        work = torch.float32 if self.qweight.device.type == "cpu" else dtype
        codes, scales = self.qweight[rows], self.scales[rows].to(work)
        if self.bits == 8:
            return (codes.to(work) * scales[:, None]).to(dtype)
        unpacked = unpack_int4(codes).view(len(codes), -1, self.group_size).to(work)
        mins = self.mins[rows].to(work)[..., None]
        weight = torch.addcmul(mins, unpacked, scales[..., None])
        return weight.view(len(codes), self.in_features).to(dtype)

    def dequantized_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T` through a dense matmul (`x` is `[rows, in]`); on the CPU the weight is
        dequantized `DEQUANT_BLOCK` elements at a time so that each block stays in cache."""
        step = max(1, DEQUANT_BLOCK // self.in_features)
        if x.device.type != "cpu" or step >= self.out_features:
            return F.linear(x, self.dequantize(x.dtype))
        out = x.new_empty(x.shape[0], self.out_features)
        for start in range(0, self.out_features, step):
            block = slice(start, start + step)
            out[:, block] = F.linear(x, self.dequantize(x.dtype, block))
        return out

    def uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether a `[rows, in]` input goes through PyTorch's weight-only CPU kernel: bf16 on
        the CPU with at most `KERNEL_MAX_ROWS[bits]` rows, in shapes the kernels accept (the int4
        packer needs `out % 16 == 0`; in torch 2.13 the bf16 int8 kernel crashes the process
        with SIGSEGV when `in % 16 != 0`, so both require `in % 64 == 0`)."""
        rows = KERNEL_MAX_ROWS[self.bits]
        if x.device.type != "cpu" or x.dtype != torch.bfloat16 or x.shape[0] > rows:
            return False
        if self.in_features % 64 or self.out_features % 16:
            return False
        if self.bits == 8:
            return hasattr(torch, "_weight_int8pack_mm")
        return self.group_size in KERNEL_GROUP_SIZES and hasattr(
            torch, "_weight_int4pack_mm_for_cpu"
        )

    def kernel_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ W.T` with PyTorch's CPU weight-only kernel (`x` is `[rows, in]`)."""
        if self.bits == 8:
            return torch._weight_int8pack_mm(x, self.qweight, self.scales.to(x.dtype))
        packed, scales_and_zeros = self._int4_kernel_operands(x.dtype)
        return torch._weight_int4pack_mm_for_cpu(x, packed, self.group_size, scales_and_zeros)

    def _int4_kernel_operands(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel's ISA-specific packing of the codes (built once) and its
        `[groups, out, 2]` table of (scale, zero) with `w = (q - 8) * scale + zero`."""
        cache = self._int4_kernel_cache
        if cache is None or cache[0] is not self.qweight or cache[2].dtype != dtype:
            codes = unpack_int4(self.qweight).to(torch.int32)
            packed = torch._convert_weight_to_int4pack_for_cpu(codes, 1)
            scales, mins = self.scales.float(), self.mins.float()
            table = torch.stack((scales, mins + 8 * scales), dim=-1).transpose(0, 1)
            cache = self._int4_kernel_cache = (self.qweight, packed, table.contiguous().to(dtype))
        return cache[1], cache[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.uses_kernel(rows):
            out = self.kernel_matmul(rows.contiguous())
        else:
            out = self.dequantized_matmul(rows)
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        shape = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{shape}, bits={self.bits}{group}"


def _target_linears(model: nn.Module, spec: QuantSpec) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every Linear to quantize, in model order."""
    return [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if name in spec.modules and isinstance(child, nn.Linear)
    ]


def swap_in_qlinears(model: nn.Module, spec: QuantSpec) -> None:
    """Replace the target Linears by empty `QLinear`s (on the same device) to load into."""
    for parent, name in _target_linears(model, spec):
        linear = getattr(parent, name)
        with torch.device(linear.weight.device):
            setattr(parent, name, QLinear(linear.in_features, linear.out_features, spec))


def _fold_norm_head(model: BaichuanForCausalLM) -> None:
    """Replace a NormHead by a plain Linear holding `normalize(W)` (computed in fp32)."""
    head = model.lm_head
    if isinstance(head, NormHead):
        with torch.no_grad(), torch.device(head.weight.device):
            plain = nn.Linear(
                head.in_features, head.out_features, bias=False, dtype=head.weight.dtype
            )
            plain.weight.copy_(F.normalize(head.weight.float(), dim=-1))
        model.lm_head = plain
    model.config.norm_head = False


@torch.no_grad()
def quantize_model(
    model: BaichuanForCausalLM, spec: QuantSpec, *, progress: bool = False
) -> dict[str, float]:
    """Quantize `model` in place (targets -> `QLinear`, NormHead folded, config updated).

    Returns the mean relative weight error `||W - deq(q(W))||_F / ||W||_F` per module name.
    """
    targets = _target_linears(model, spec)
    if not targets:
        raise InputError(f"the model has none of the target Linears {spec.modules}")
    errors: dict[str, list[float]] = {name: [] for name in spec.modules}
    for parent, name in tqdm(targets, desc="quantize", unit="linear", disable=not progress):
        linear = getattr(parent, name)
        qlinear = QLinear.from_linear(linear, spec)
        weight = linear.weight.float()
        errors[name].append(
            float((weight - qlinear.dequantize()).norm() / weight.norm().clamp_min(1e-30))
        )
        setattr(parent, name, qlinear)
    _fold_norm_head(model)
    model.config.quantization_config = spec.to_config()
    return {name: sum(v) / len(v) for name, v in errors.items() if v}


def read_source(src: str | Path) -> tuple[BaichuanConfig, dict[str, torch.Tensor]]:
    """Config and state dict of an unquantized Baichuan / chuan or HF LLaMA model dir."""
    raw = read_config_dict(src)
    if (raw.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD:
        raise InputError(f"{src} is already quantized by chuan; start from the unquantized model")
    if raw.get("model_type") == "llama":
        return llama_to_baichuan(raw, read_state_dict(src))
    if raw.get("model_type") == "baichuan":
        return BaichuanConfig.from_pretrained(src), read_state_dict(src)
    raise InputError(
        f"{src}/config.json has model_type {raw.get('model_type')!r}; chuan quantizes "
        "'baichuan' and 'llama' model dirs"
    )


def build_model(
    config: BaichuanConfig,
    state: dict[str, torch.Tensor],
    *,
    spec: QuantSpec | None = None,
    device: str | torch.device | None = None,
    where: str | Path = "",
) -> BaichuanForCausalLM:
    """A model of `config` with the weights of `state` (`QLinear` targets when `spec` is
    given), built on the meta device so nothing is initialised for nothing.

    Without `device` the model adopts the tensors of `state` as they are (no copy; enough to
    quantize a source once). With a device it allocates its own memory there and copies
    them in: inference wants that, because tensors read from safetensors may be unaligned
    views and CPU BLAS rounds a one-row matmul differently on unaligned weights.
    """
    with torch.device("meta"):
        model = BaichuanForCausalLM(config)
        if spec is not None:
            swap_in_qlinears(model, spec)
    if device is not None:
        model.to_empty(device=device)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=device is None)
    tied = config.tie_word_embeddings and missing == ["lm_head.weight"]
    if (missing and not tied) or unexpected:
        raise InputError(
            f"{where}: weights do not fit the config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if tied:
        model.tie_weights()
    return model


def load_quantized(
    model_dir: str | Path,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> BaichuanForCausalLM:
    """A `chuan quantize` dir as a model with `QLinear` targets, in eval mode on `device`.

    `dtype` is the compute dtype: embeddings, norms and head are cast to it; the quantized
    codes stay as stored and the scales are cast per matmul.
    """
    config = BaichuanConfig.from_pretrained(model_dir)
    spec = QuantSpec.from_config(
        getattr(config, "quantization_config", None), Path(model_dir) / "config.json"
    )
    device = torch.device(device or "cpu")
    model = build_model(
        config, read_state_dict(model_dir), spec=spec, device=device, where=model_dir
    )
    return model.to(dtype=dtype).eval()


# ---- transformers integration -----------------------------------------------------------


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


register_with_transformers()


# ---- memory -------------------------------------------------------------------------------


def linear_shapes(config: BaichuanConfig) -> list[tuple[int, int]]:
    """`(out, in)` of every target Linear of a model with `config`."""
    h, f = config.hidden_size, config.intermediate_size
    q_size = config.num_attention_heads * config.head_dim
    kv = config.num_key_value_heads * config.head_dim
    per_layer = {
        "W_pack": (q_size + 2 * kv, h),
        "o_proj": (h, q_size),
        "gate_proj": (f, h),
        "up_proj": (f, h),
        "down_proj": (h, f),
    }
    return list(per_layer.values()) * config.num_hidden_layers


def quantized_linear_bytes(out_features: int, in_features: int, spec: QuantSpec) -> int:
    """Bytes of one `QLinear`'s buffers."""
    if spec.bits == 8:
        return out_features * in_features + 4 * out_features
    groups = out_features * math.ceil(in_features / spec.group_size)
    return out_features * in_features // 2 + 2 * INT4_SCALE_DTYPE.itemsize * groups


def weight_bytes(
    config: BaichuanConfig, precision: str, group_size: int = DEFAULT_GROUP_SIZE
) -> int:
    """Weight bytes of a model with `config` in `fp32`, `bf16`, `int8` or `int4` (targets
    quantized, everything else bf16, as Baichuan's published table assumes)."""
    total = parameter_count(config)
    if precision in ("fp32", "bf16"):
        return total * (4 if precision == "fp32" else 2)
    spec = QuantSpec(8) if precision == "int8" else QuantSpec(4, group_size)
    shapes = linear_shapes(config)
    quantized = sum(quantized_linear_bytes(o, i, spec) for o, i in shapes)
    return quantized + 2 * (total - sum(o * i for o, i in shapes))


def memory_table(config: BaichuanConfig, group_size: int = DEFAULT_GROUP_SIZE) -> list[dict]:
    """Rows {model, fp32, bf16, int8, int4 (bytes), published (GiB)} for this model and, from
    their shapes, Baichuan2-7B and -13B."""
    rows = []
    models = {
        "this model": config,
        "Baichuan2-7B": preset_config("baichuan2-7b"),
        "Baichuan2-13B": preset_config("baichuan2-13b"),
    }
    for name, cfg in models.items():
        row = {"model": name}
        row |= {p: weight_bytes(cfg, p, group_size) for p in ("fp32", "bf16", "int8", "int4")}
        row["published_gib"] = PUBLISHED_GIB.get(name)
        rows.append(row)
    return rows


def render_memory_table(rows: list[dict]) -> str:
    """Markdown: GiB per precision, published values in brackets."""
    lines = [
        "| model | fp32 GiB | bf16 GiB | int8 GiB | int4 GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        published = row.get("published_gib") or {}
        cells = []
        for p in ("fp32", "bf16", "int8", "int4"):
            cell = f"{row[p] / _GIB:.3g}" if row[p] >= _GIB / 100 else f"{row[p] / 2**20:.3g} MiB"
            if p in published:
                cell += f" (published {published[p]})"
            cells.append(cell)
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the command --------------------------------------------------------------------------


@dataclass
class QuantizeReport:
    model: str
    out: str
    bits: int
    group_size: int | None
    scheme: str
    modules: list[str]
    quantized_linears: int
    norm_head_folded: bool
    source_bytes: int
    output_bytes: int
    weight_error: dict[str, float]
    memory_table: list[dict]
    perplexity: dict | None = None
    seconds: float = 0.0


def _dir_weight_bytes(model_dir: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(model_dir).glob("*.safetensors")) or sum(
        p.stat().st_size for p in Path(model_dir).glob("*.bin")
    )


def quantize_dir(
    src: str | Path,
    out: str | Path,
    *,
    bits: int,
    group_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the model dir `src` into the model dir `out` (atomically), then write
    `report.json` / `report.md` into `out`. The perplexity before and after is measured above
    this room (`chuan.eval.perplexity.compare_perplexity`); `write_report` adds it."""
    started = time.perf_counter()
    if bits == 4 and group_size is None:
        group_size = DEFAULT_GROUP_SIZE
    spec = QuantSpec(bits, group_size)
    config, state = read_source(src)
    model = build_model(config, state, where=src)
    del state
    norm_head = bool(config.norm_head)
    errors = quantize_model(model, spec, progress=progress)
    count = sum(isinstance(m, QLinear) for m in model.modules())
    write_model_dir(out, model.config, model.state_dict(), side_files_from=src, overwrite=overwrite)
    del model
    report = QuantizeReport(
        model=str(src),
        out=str(out),
        bits=bits,
        group_size=spec.group_size,
        scheme=spec.scheme,
        modules=list(spec.modules),
        quantized_linears=count,
        norm_head_folded=norm_head,
        source_bytes=_dir_weight_bytes(src),
        output_bytes=_dir_weight_bytes(out),
        weight_error=errors,
        memory_table=memory_table(config, spec.group_size or DEFAULT_GROUP_SIZE),
    )
    report.seconds = time.perf_counter() - started
    write_report(report, out)
    return report


def render_report(report: QuantizeReport) -> str:
    """The human report: what was done, bytes, weight error, memory table, perplexity."""
    lines = [
        f"# chuan quantize: {report.model} -> {report.out}",
        "",
        f"- scheme: {report.scheme}; {report.quantized_linears} Linears "
        f"({', '.join(report.modules)}); embeddings, norms and head kept in floating point",
        "- NormHead folded into a normalised plain head: "
        + ("yes" if report.norm_head_folded else "no (the source has a plain head)"),
        f"- weight files: {report.source_bytes / 2**20:,.2f} MiB -> "
        f"{report.output_bytes / 2**20:,.2f} MiB",
        "- mean relative weight error ||W - deq(q(W))|| / ||W||: "
        + ", ".join(f"{k} {v:.4f}" for k, v in report.weight_error.items()),
        f"- took {report.seconds:.1f} s",
        "",
        "## Weight memory (targets quantized, the rest bf16; computed from the shapes)",
        "",
        render_memory_table(report.memory_table),
    ]
    if report.perplexity:
        p = report.perplexity
        lines += [
            "",
            f"## Held-out perplexity ({p['documents']:,} documents, {p['tokens']:,} tokens of "
            f"{p['text']}, windows of {p['window']}, {p['dtype']}; as `chuan eval ppl --lines`)",
            "",
            "| model | perplexity |",
            "|---|---:|",
            f"| unquantized | {p['before']:.4f} |",
            f"| int{report.bits} | {p['after']:.4f} ({p['relative_change']:+.2%}) |",
        ]
    return "\n".join(lines) + "\n"


def write_report(report: QuantizeReport, out: str | Path) -> None:
    write_atomic(Path(out) / REPORT_JSON, json.dumps(asdict(report), indent=2) + "\n")
    write_atomic(Path(out) / REPORT_MD, render_report(report))
