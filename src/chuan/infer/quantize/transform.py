"""Quantizing a model and building one: target Linears swapped for `QLinear`s, the NormHead
folded into a plain head, and a (quantized) model built from a config and a state dict.

Reading a source dir is `chuan.model.convert.read_as_baichuan`; loading a model dir for
inference is `chuan.infer.loading`, which sits above this module.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from chuan.errors import InputError
from chuan.infer.quantize.formats import QLinear, QuantSpec
from chuan.model.checkpoint import read_state_dict
from chuan.model.config import BaichuanConfig
from chuan.model.convert import load_checked
from chuan.model.modeling import BaichuanForCausalLM, NormHead


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


def model_from_state(
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
    load_checked(model, state, where=where, assign=device is None)
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
    model = model_from_state(
        config, read_state_dict(model_dir), spec=spec, device=device, where=model_dir
    )
    return model.to(dtype=dtype).eval()
