"""The quantized format: which Linears, the int8 / int4 schemes, their packing, `QLinear`.

Weight-only int8 / int4 quantization of the five Linears per layer that Baichuan quantizes.

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

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from chuan.errors import InputError

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
