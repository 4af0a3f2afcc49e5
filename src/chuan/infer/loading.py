"""Load a model dir for inference: the one door chat, serve, eval and quantize go through.

A dir may hold a chuan / Baichuan model, an HF LLaMA model (converted in memory) or a
chuan-quantized model (`quantization_config.quant_method == "chuan"` in `config.json`).
"""

from __future__ import annotations

import contextlib
import json
import warnings
from pathlib import Path

import torch

from chuan.errors import InputError, MissingError
from chuan.infer.quantize import QUANT_METHOD, load_quantized
from chuan.infer.virtual_tokens import share_virtual_tokens
from chuan.model.checkpoint import TOKENIZER_FILES, read_config_dict
from chuan.model.convert import load_as_baichuan
from chuan.model.precision import prefers_bf16

# peft's methods that put virtual tokens before the input instead of changing weights
PROMPT_LEARNING_TYPES = ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING")

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


def load_model(
    model_dir: str | Path,
    *,
    device: str | None = None,
    dtype: str = "auto",
    adapter: str | Path | None = None,
):
    """The model of `model_dir` in eval mode on `device` (see `pick_device`, `pick_dtype`).

    With `adapter` (a peft LoRA or AdaLoRA dir trained on this model), the adapter is folded
    into the weights in fp32 as the model loads, so generation runs at the plain model's
    speed. A prompt-learning adapter (prefix, prompt, P-tuning) has no weights to fold: the
    model comes back as peft's `PeftModel`, which chuan's decoder runs with its virtual
    tokens (`chuan.infer.virtual_tokens`).
    """
    target = pick_device(device)
    torch_dtype = pick_dtype(dtype, target)
    if is_quantized(model_dir):
        if adapter is not None:
            raise InputError(
                f"{model_dir} is quantized: an adapter cannot be folded into its weights; "
                "load the unquantized base with --adapter, or merge first (`chuan lora merge`) "
                "and quantize the merged model"
            )
        model = load_quantized(model_dir, device=target, dtype=torch_dtype)
    elif adapter is not None:
        model = with_adapter(load_as_baichuan(model_dir, dtype=torch.float32), adapter)
        model = model.to(device=target, dtype=torch_dtype)
    else:
        model = load_as_baichuan(model_dir, dtype=torch_dtype).to(target)
    model.name_or_path = str(adapter or model_dir)  # where chat finds generation defaults
    return model.eval()


@contextlib.contextmanager
def quiet_peft():
    """peft asks the model `is_gradient_checkpointing`, which transformers 5 deprecates, and
    its generic pattern check reads an AdaLoRA adapter's saved `rank_pattern` (per-parameter
    rank masks, which AdaLoRA applies itself) as unmatched module names; both warnings are
    about peft's code, not the user's, so they are not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        warnings.filterwarnings("ignore", message=".*rank_pattern keys did not match.*")
        yield


def adapter_type(adapter: str | Path) -> str:
    """peft's name for the method of an adapter dir (`LORA`, `ADALORA`, `PREFIX_TUNING`...)."""
    path = Path(adapter) / "adapter_config.json"
    if not path.is_file():
        raise MissingError(
            f"{adapter} is not an adapter dir (no adapter_config.json); `chuan sft` with "
            "finetune: lora (or another peft method) writes one to OUT/adapter"
        )
    return str(json.loads(path.read_text(encoding="utf-8")).get("peft_type", "LORA"))


def is_prompt_learning(adapter: str | Path) -> bool:
    """Whether an adapter dir holds virtual tokens (prefix, prompt, P-tuning), not weights."""
    return adapter_type(adapter) in PROMPT_LEARNING_TYPES


def with_adapter(model, adapter: str | Path):
    """`model` with a peft adapter: LoRA / AdaLoRA folded in (`W += scale * B A`) and
    unwrapped again; a prompt-learning adapter, which has nothing to fold, left as peft's
    `PeftModel`, its virtual tokens shared by packed or padded rows."""
    from peft import PeftModel

    prompt_learning = is_prompt_learning(adapter)
    try:
        with quiet_peft():
            wrapped = PeftModel.from_pretrained(model, str(adapter))
    except (ValueError, KeyError, RuntimeError) as e:
        raise InputError(
            f"{adapter} does not fit this model: {e}. An adapter trained on a LLaMA-layout "
            "copy (q_proj/k_proj/v_proj) does not fit Baichuan's fused W_pack "
            "(hiyouga/LLaMA-Factory#3376): merge it into that copy instead"
        ) from e
    if prompt_learning:
        share_virtual_tokens(wrapped)
        return wrapped
    return wrapped.merge_and_unload()


def side_files_dir(model_dir: str | Path, adapter: str | Path | None = None) -> Path:
    """Where the tokenizer, chat template and generation settings of a model (with an
    optional adapter) are read: the adapter's dir when it has tokenizer files (`chuan sft`
    writes the template there), else the model dir."""
    if adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file():
        return Path(adapter)
    return Path(model_dir)


def load_saved_tokenizer(model_dir: str | Path):
    """The tokenizer saved in `model_dir`, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    if not Path(model_dir).is_dir():
        read_config_dict(model_dir)  # raises "no such model dir", naming the path
    if not any((Path(model_dir) / name).is_file() for name in TOKENIZER_FILES[:2]):
        return None
    return AutoTokenizer.from_pretrained(str(model_dir))
