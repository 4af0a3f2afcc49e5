"""Load a model dir for inference: the one door chat, serve, eval and quantize go through.

A dir may hold a chuan / Baichuan model, an HF LLaMA model (converted in memory) or a
chuan-quantized model (`quantization_config.quant_method == "chuan"` in `config.json`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from chuan.errors import InputError
from chuan.infer.quantize import QUANT_METHOD, load_quantized
from chuan.model.checkpoint import TOKENIZER_FILES, read_config_dict
from chuan.model.convert import load_as_baichuan
from chuan.model.precision import prefers_bf16

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(device: str | None = None) -> torch.device:
    """`device`, or the first CUDA GPU when there is one, else the CPU."""
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 where `prefers_bf16` (a GPU with bf16), fp32 elsewhere."""
    if dtype == "auto":
        return torch.bfloat16 if prefers_bf16(device) else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; choose auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def is_quantized(model_dir: str | Path) -> bool:
    """Whether `config.json` says the dir was written by `chuan quantize`."""
    quant = read_config_dict(model_dir).get("quantization_config") or {}
    return quant.get("quant_method") == QUANT_METHOD


def load_model(model_dir: str | Path, *, device: str | None = None, dtype: str = "auto"):
    """The model of `model_dir` in eval mode on `device` (see `pick_device`, `pick_dtype`)."""
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    if is_quantized(model_dir):
        model = load_quantized(model_dir, device=target, dtype=torch_dtype)
    else:
        model = load_as_baichuan(model_dir, dtype=torch_dtype).to(target)
    model.name_or_path = str(model_dir)  # where chat finds the dir's generation defaults
    return model.eval()


def load_saved_tokenizer(model_dir: str | Path):
    """The tokenizer saved in `model_dir`, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    if not Path(model_dir).is_dir():
        read_config_dict(model_dir)  # raises "no such model dir", naming the path
    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES[:2]):
        return None
    return AutoTokenizer.from_pretrained(str(model_dir))
