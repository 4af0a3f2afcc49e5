"""Conversion between a Baichuan model dir and the plain Hugging Face LLaMA layout.

RoPE Baichuan models are LLaMA with a fused QKV and (Baichuan 2) a normalised head, so the
export splits `W_pack` into q/k/v (no permutation: both use half-split RoPE) and folds NormHead
into `lm_head` by normalising its rows in fp32, as hiyouga/LLaMA-Factory's
`scripts/convert_ckpt/llamafy_baichuan2.py` does (fp16 `normalize` fails on the CPU,
vllm-project/vllm#1022). The import concatenates q/k/v and keeps a plain head: enabling
NormHead on a LLaMA head would change the function.

`read_as_baichuan` is the one reader of a model dir for every consumer that wants chuan's own
layout (convert, load, quantize, GGUF export): like a torchtitan per-model
`state_dict_adapter`'s `from_hf`, it maps each source layout to the native one in one place,
and `baichuan_to_llama` is the way back (`to_hf`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig

from chuan.errors import InputError
from chuan.model.checkpoint import read_config, read_config_dict, read_state_dict, write_model_dir
from chuan.model.config import BaichuanConfig
from chuan.model.modeling import BaichuanForCausalLM, BaichuanForSequenceClassification

FORMATS = ("baichuan", "llama")
# `quantization_config.quant_method` of a `chuan quantize` dir (`chuan.infer.quantize`).
QUANTIZED_METHOD = "chuan"
_LAYER_KEY = "model.layers.{}.self_attn.{}.weight"


def read_as_baichuan(src: str | Path) -> tuple[BaichuanConfig, dict[str, torch.Tensor]]:
    """Config and state dict, in the Baichuan layout, of an unquantized Baichuan / chuan or
    HF LLaMA model dir (a LLaMA dir is converted in memory by `llama_to_baichuan`)."""
    raw = read_config_dict(src)
    if (raw.get("quantization_config") or {}).get("quant_method") == QUANTIZED_METHOD:
        raise InputError(f"{src} is already quantized by chuan; start from the unquantized model")
    source = raw.get("model_type")
    if source == "llama":
        return llama_to_baichuan(raw, read_state_dict(src), where=src)
    if source == "baichuan":
        return read_config(src), read_state_dict(src)
    raise InputError(
        f"{src}/config.json has model_type {source!r}; chuan reads {FORMATS} model dirs only"
    )


def convert(src: str | Path, out: str | Path, to: str, *, overwrite: bool = False) -> Path:
    """Convert the model dir `src` (format read from its config.json) to format `to`.

    baichuan -> baichuan rewrites a released dir (.bin, implicit fields) in chuan's layout.
    """
    if to not in FORMATS:
        raise InputError(f"--to must be one of {FORMATS}, got {to!r}")
    if (read_config_dict(src).get("model_type"), to) == ("llama", "llama"):
        raise InputError(f"{src} is already a LLaMA dir; use --to baichuan to import it")
    config, state = read_as_baichuan(src)
    if to == "llama":
        config, state = baichuan_to_llama(config, state)
    return write_model_dir(out, config, state, side_files_from=src, overwrite=overwrite)


def load_checked(
    model: BaichuanForCausalLM | BaichuanForSequenceClassification,
    state: dict[str, torch.Tensor],
    *,
    where: str | Path = "",
    assign: bool = False,
) -> None:
    """Load `state` into `model` (`assign`: adopt its tensors), refusing missing or unexpected
    weights (a tied `lm_head.weight` may be absent), then tie the head when the config says so.

    Shape mismatches raise `RuntimeError` from `load_state_dict`, for the caller to explain.
    """
    missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    tied = model.config.tie_word_embeddings
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise InputError(
            f"{where}: weights do not fit the config: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}"
        )
    if tied:
        model.tie_weights()


def load_as_baichuan(
    src: str | Path, *, dtype: torch.dtype = torch.float32, **config_overrides
) -> BaichuanForCausalLM:
    """Any Baichuan, chuan or HF LLaMA model dir as a chuan model, converted in memory.

    This is how continued pretraining starts from LLaMA-2 without an intermediate dir.
    """
    config, state = read_as_baichuan(src)
    if "score.weight" in state:
        raise InputError(
            f"{src} is a reward model (a score head, no LM head): it scores text "
            "(`chuan rm score`) and does not generate"
        )
    for key, value in config_overrides.items():
        if not hasattr(config, key):
            raise InputError(f"unknown model config field {key!r}")
        setattr(config, key, value)
    model = BaichuanForCausalLM(config)
    try:
        load_checked(model, state, where=src)
    except RuntimeError as err:  # shapes: read_state_dict checked them, so an override
        raise InputError(
            f"{src}: the weights do not fit the model once {sorted(config_overrides)} are "
            f"overridden ({str(err).splitlines()[-1].strip()}); only override fields that "
            "keep the shapes"
        ) from None
    return model.to(dtype)


def load_reward_model(
    src: str | Path, *, dtype: torch.dtype = torch.float32, require_head: bool = False
):
    """A `BaichuanForSequenceClassification` with one output: `src` itself when it is one
    (its weights hold `score.weight`), else (unless `require_head`) the decoder of any dir
    `read_as_baichuan` reads with a new `score` head, N(0, initializer_range) from the
    current torch seed."""
    config, state = read_as_baichuan(src)
    if require_head and "score.weight" not in state:
        raise InputError(
            f"{src} is not a reward model (no score head); train one with `chuan rm train`"
        )
    state.pop("lm_head.weight", None)
    if "score.weight" not in state:
        config.num_labels = 1
    config.architectures = [BaichuanForSequenceClassification.__name__]
    model = BaichuanForSequenceClassification(config)
    state.setdefault("score.weight", model.score.weight.detach())
    if model.num_labels != 1:
        raise InputError(f"{src}: a reward model has one output; this one has {model.num_labels}")
    load_checked(model, state, where=src)
    return model.to(dtype)


def baichuan_to_llama(
    config: BaichuanConfig, state: dict[str, torch.Tensor]
) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """A `LlamaForCausalLM` config and state dict computing the same function."""
    if config.position_encoding != "rope":
        raise InputError(
            "ALiBi models (the 13B family) have no LLaMA equivalent; keep them in the Baichuan "
            "layout (`chuan convert SRC OUT --to baichuan`)"
        )
    q_size = config.num_attention_heads * config.head_dim
    kv_size = config.num_key_value_heads * config.head_dim
    out = {}
    for key, tensor in state.items():
        if key.endswith("self_attn.W_pack.weight"):
            prefix = key.removesuffix("W_pack.weight")
            # Clones: safetensors refuses views that share one storage.
            q, k, v = (t.clone() for t in tensor.split((q_size, kv_size, kv_size), dim=0))
            out |= {prefix + "q_proj.weight": q, prefix + "k_proj.weight": k}
            out[prefix + "v_proj.weight"] = v
        elif key == "lm_head.weight" and config.norm_head:
            out[key] = F.normalize(tensor.float(), dim=-1).to(tensor.dtype)
        else:
            out[key] = tensor
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    llama = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta,
        tie_word_embeddings=config.tie_word_embeddings,
        pad_token_id=config.pad_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        initializer_range=config.initializer_range,
        dtype=_dtype_of(out),
        architectures=["LlamaForCausalLM"],
    )
    return llama, out


def llama_to_baichuan(
    llama: dict, state: dict[str, torch.Tensor], *, where: str | Path | None = None
) -> tuple[BaichuanConfig, dict[str, torch.Tensor]]:
    """A Baichuan (RoPE, plain head) config and state dict from a HF LLaMA config dict
    (`where`: the model dir it came from, named in errors)."""
    try:
        config = _baichuan_config_of_llama(llama, state)
    except (InputError, KeyError, TypeError, ValueError) as err:
        path = f"{where}/config.json" if where is not None else "the LLaMA config"
        if isinstance(err, KeyError):
            err = f"field {err.args[0]} is missing"
        raise InputError(f"{path}: {err}; fix the field or restore the config.json") from None
    out = dict(state)
    for i in range(config.num_hidden_layers):
        q, k, v = (out.pop(_LAYER_KEY.format(i, name)) for name in ("q_proj", "k_proj", "v_proj"))
        out[_LAYER_KEY.format(i, "W_pack")] = torch.cat((q, k, v), dim=0)
    if config.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return config, out


def _baichuan_config_of_llama(llama: dict, state: dict[str, torch.Tensor]) -> BaichuanConfig:
    _check_llama_supported(llama)
    rope = llama.get("rope_parameters") or {}
    heads = llama["num_attention_heads"]
    return BaichuanConfig(
        vocab_size=llama["vocab_size"],
        hidden_size=llama["hidden_size"],
        intermediate_size=llama["intermediate_size"],
        num_hidden_layers=llama["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=llama.get("num_key_value_heads") or heads,
        max_position_embeddings=llama.get("max_position_embeddings", 4096),
        rms_norm_eps=llama.get("rms_norm_eps", 1e-6),
        initializer_range=llama.get("initializer_range", 0.02),
        rope_theta=float(llama.get("rope_theta") or rope.get("rope_theta") or 10000.0),
        tie_word_embeddings=bool(llama.get("tie_word_embeddings", False)),
        pad_token_id=llama.get("pad_token_id"),
        bos_token_id=llama.get("bos_token_id", 1),
        eos_token_id=llama.get("eos_token_id", 2),
        position_encoding="rope",
        norm_head=False,
        architectures=["BaichuanForCausalLM"],
        dtype=str(_dtype_of(state)).removeprefix("torch."),
    )


def _check_llama_supported(llama: dict) -> None:
    """Name the LLaMA-family features the Baichuan architecture cannot represent."""
    rope = llama.get("rope_parameters") or llama.get("rope_scaling") or {}
    problems = []
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope scaling {rope.get('rope_type', rope.get('type'))!r}")
    if llama.get("attention_bias") or llama.get("mlp_bias"):
        problems.append("attention or MLP biases")
    if llama.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {llama['hidden_act']!r}")
    head_dim = llama.get("head_dim")
    if head_dim and head_dim * llama["num_attention_heads"] != llama["hidden_size"]:
        problems.append(f"head_dim {head_dim} != hidden_size / num_attention_heads")
    if problems:
        raise InputError("cannot import this LLaMA model: it uses " + ", ".join(problems))


def _dtype_of(state: dict[str, torch.Tensor]) -> torch.dtype:
    return next(t.dtype for t in state.values() if t.is_floating_point())
