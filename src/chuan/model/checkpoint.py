"""Model dirs on disk: the Hugging Face layout (config.json, safetensors, generation config,
tokenizer files), read from safetensors or, for released Baichuan checkpoints, from
`pytorch_model*.bin` with `weights_only=True`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file
from transformers import GenerationConfig, PreTrainedConfig

from chuan.errors import InputError, MissingError
from chuan.fileio import atomic_dir
from chuan.model.config import BaichuanConfig
from chuan.model.modeling import BaichuanForCausalLM
from chuan.model.presets import preset_config

TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
# Recomputed from positions, never loaded (Baichuan-7B v1 stored it as a buffer).
_SKIPPED_KEYS = ("rotary_emb.inv_freq",)
# The config.json fields that set the weights' shapes (named when a shape does not fit).
_SHAPE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)


def _no_such_dir(model_dir: str | Path) -> MissingError:
    what = "is a file, not a model dir" if Path(model_dir).exists() else "no such model dir"
    return MissingError(
        f"{model_dir}: {what} (a dir with config.json and weights, such as "
        "`chuan model init` or `chuan pretrain` writes); check the path"
    )


def read_config_dict(model_dir: str | Path) -> dict:
    """The raw `config.json` of a model dir: a missing dir or file, unparseable JSON or
    anything but a JSON object is an error naming the path."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise _no_such_dir(model_dir)
    path = model_dir / "config.json"
    if not path.is_file():
        raise MissingError(f"{path} not found: {model_dir} is not a Hugging Face model dir")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except UnicodeDecodeError as err:
        raise InputError(
            f"{path} is not UTF-8 text ({err}); restore the model's config.json"
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(
            f"{path} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg}); "
            "fix or restore the model's config.json"
        ) from None
    if not isinstance(raw, dict):
        raise InputError(
            f"{path} must hold a JSON object of config fields, found a {type(raw).__name__}; "
            "restore the model's config.json"
        )
    return raw


def read_config(model_dir: str | Path) -> BaichuanConfig:
    """The `BaichuanConfig` of a Baichuan / chuan model dir; a bad field is an error naming
    `config.json`'s path and the field."""
    read_config_dict(model_dir)  # the dir, the file and the JSON, each with its own message
    path = Path(model_dir) / "config.json"
    try:
        return BaichuanConfig.from_pretrained(str(model_dir))
    except (InputError, TypeError, ValueError, KeyError) as err:
        raise InputError(f"{path}: {err}; fix the field or restore the config.json") from None


def _weight_files(model_dir: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if index.is_file():
            try:
                with open(index, encoding="utf-8") as f:
                    shards = sorted(set(json.load(f)["weight_map"].values()))
            except (ValueError, KeyError, TypeError, AttributeError) as err:
                raise InputError(
                    f"{index} is not a weight index (a JSON object with a `weight_map`: "
                    f"{type(err).__name__}: {err}); restore it from the model's source"
                ) from None
            missing = [s for s in shards if not (model_dir / s).is_file()]
            if missing:
                raise MissingError(
                    f"{index} names weight files that are not in {model_dir}: {missing[:3]}; "
                    "copy the whole model dir"
                )
            return [model_dir / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return [model_dir / name]
    if not model_dir.is_dir():
        raise _no_such_dir(model_dir)
    raise MissingError(
        f"no weights in {model_dir}: expected model.safetensors, pytorch_model.bin or a "
        "sharded index"
    )


def _read_tensors(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Every tensor of the dir and the file each came from."""
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for file in _weight_files(model_dir):
        try:
            if file.suffix == ".safetensors":
                tensors = load_file(file)
            else:
                tensors = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # safetensors / pickle errors have no common base class
            raise InputError(
                f"{file} cannot be read as weights ({type(err).__name__}: {err}); the file "
                "is damaged or incomplete: copy or download it again"
            ) from None
        state.update(tensors)
        origin.update(dict.fromkeys(tensors, file))
    kept = {k: v for k, v in state.items() if not k.endswith(_SKIPPED_KEYS)}
    return kept, origin


def read_state_dict(model_dir: str | Path, *, check: bool = True) -> dict[str, torch.Tensor]:
    """All tensors of a model dir, from single or sharded safetensors / `.bin` files.

    With `check` (the default) the tensors are checked against `config.json` first (see
    `check_weights`), so weights that do not fit their config are an error naming the file,
    the tensor and both shapes, whichever verb reads them.
    """
    model_dir = Path(model_dir)
    raw = read_config_dict(model_dir) if check else None
    state, origin = _read_tensors(model_dir)
    if raw is not None:
        check_weights(model_dir, raw, state, origin)
    return state


def _int_field(raw: dict, name: str, path: Path, default: int | None = None) -> int:
    value = raw.get(name, default)
    if value is None:
        raise InputError(f"{path}: field {name} is missing; restore the model's config.json")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(
            f"{path}: field {name} must be a whole number of at least 1, got {value!r}; "
            "fix the field or restore the config.json"
        )
    return value


def expected_shapes(raw: dict, path: Path) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """The tensors a `config.json` (Baichuan or HF LLaMA, as `raw`) calls for: their shapes,
    and the keys that may be absent (a tied `lm_head`)."""
    llama = raw.get("model_type") == "llama"
    if llama:
        heads = _int_field(raw, "num_attention_heads", path)
        fields = {
            name: _int_field(raw, name, path)
            for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        }
        kv_heads = _int_field(raw, "num_key_value_heads", path, heads)
        head_dim = _int_field(raw, "head_dim", path, fields["hidden_size"] // heads or 1)
        tied = bool(raw.get("tie_word_embeddings", False))
    else:
        config = read_config(path.parent)
        heads, kv_heads, head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
        )
        fields = {
            name: getattr(config, name)
            for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
        }
        tied = bool(config.tie_word_embeddings)
    vocab, hidden, inner = fields["vocab_size"], fields["hidden_size"], fields["intermediate_size"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    if not llama and "BaichuanForSequenceClassification" in (raw.get("architectures") or []):
        del shapes["lm_head.weight"]  # a reward model: a score head instead of the LM head
        shapes["score.weight"] = (config.num_labels, hidden)
        tied = False
    for i in range(fields["num_hidden_layers"]):
        layer = f"model.layers.{i}."
        attn = {"o_proj": (hidden, heads * head_dim)}
        if llama:
            attn |= {"q_proj": (heads * head_dim, hidden)}
            attn |= dict.fromkeys(("k_proj", "v_proj"), (kv_heads * head_dim, hidden))
        else:
            attn["W_pack"] = ((heads + 2 * kv_heads) * head_dim, hidden)
        shapes |= {f"{layer}self_attn.{name}.weight": shape for name, shape in attn.items()}
        shapes |= {
            f"{layer}mlp.gate_proj.weight": (inner, hidden),
            f"{layer}mlp.up_proj.weight": (inner, hidden),
            f"{layer}mlp.down_proj.weight": (hidden, inner),
            f"{layer}input_layernorm.weight": (hidden,),
            f"{layer}post_attention_layernorm.weight": (hidden,),
        }
    return shapes, {"lm_head.weight"} if tied else set()


def check_weights(
    model_dir: Path, raw: dict, state: dict[str, torch.Tensor], origin: dict[str, Path]
) -> None:
    """Refuse weights that do not fit `config.json`: a tensor of another shape, a missing or
    an unknown tensor. Quantized dirs and model types chuan does not read pass unchecked
    (their own loaders check them)."""
    if raw.get("model_type") not in ("baichuan", "llama") or raw.get("quantization_config"):
        return
    path = model_dir / "config.json"
    shapes, optional = expected_shapes(raw, path)
    fix = (
        f"the weights and {path} do not belong together: put back the config.json that was "
        "saved with these weights, or rewrite the dir (chuan model init, chuan convert)"
    )
    for key, want in shapes.items():
        tensor = state.get(key)
        if tensor is not None and tuple(tensor.shape) != want:
            sizes = ", ".join(f"{name} {raw[name]}" for name in _SHAPE_FIELDS if name in raw)
            raise InputError(
                f"{origin[key]}: tensor {key} has shape {list(tensor.shape)}, but "
                f"{path} ({sizes}) expects {list(want)}; {fix}"
            )
    missing = [k for k in shapes if k not in state and k not in optional]
    unexpected = [k for k in state if k not in shapes]
    if missing or unexpected:
        parts = [f"missing {missing[:3]}" if missing else ""]
        parts.append(f"unexpected {unexpected[:3]}" if unexpected else "")
        files = sorted({str(origin[k].name) for k in state})
        raise InputError(
            f"{model_dir}: the weights in {', '.join(files)} do not fit {path}: "
            f"{', '.join(p for p in parts if p)}; {fix}"
        )


def copy_side_files(src: str | Path, dst: str | Path) -> list[str]:
    """Copy tokenizer files and `generation_config.json` that exist in `src` to `dst`."""
    copied = []
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied


def write_model_dir(
    out_dir: str | Path,
    config: PreTrainedConfig,
    state_dict: dict[str, torch.Tensor],
    *,
    side_files_from: str | Path | None = None,
    overwrite: bool = False,
    max_shard_size: str = "5GB",
) -> Path:
    """Write config, sharded safetensors and side files atomically; returns `out_dir`.

    A tied head is left out of the weights (the embedding is the one copy)."""
    if getattr(config, "tie_word_embeddings", False):
        state_dict = {k: v for k, v in state_dict.items() if k != "lm_head.weight"}
    # A tensor gathered from FSDP shards can be a view into a padded buffer (a 1-row reward
    # head over 2 ranks); safetensors refuses to write views, so those are copied.
    state_dict = {k: v if _owns_storage(v) else v.clone() for k, v in state_dict.items()}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(tmp)
        save_torch_state_dict(state_dict, tmp, max_shard_size=max_shard_size)
        copied = copy_side_files(side_files_from, tmp) if side_files_from else []
        if "generation_config.json" not in copied:
            GenerationConfig.from_model_config(config).save_pretrained(tmp)
    return Path(out_dir)


def _owns_storage(tensor: torch.Tensor) -> bool:
    return tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    """Vocabulary size of a SentencePiece (`tokenizer.model`) or `tokenizer.json` dir."""
    tokenizer_dir = Path(tokenizer_dir)
    if (tokenizer_dir / "tokenizer.model").is_file():
        import sentencepiece as spm

        size = spm.SentencePieceProcessor(
            model_file=str(tokenizer_dir / "tokenizer.model")
        ).vocab_size()
        added = tokenizer_dir / "added_tokens.json"
        if added.is_file():
            with open(added, encoding="utf-8") as f:
                size = max([size, *(i + 1 for i in json.load(f).values())])
        return size
    if (tokenizer_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    raise MissingError(f"no tokenizer.model or tokenizer.json in {tokenizer_dir}")


def init_model_dir(
    out_dir: str | Path,
    preset: str,
    *,
    vocab_size: int | None = None,
    tokenizer_dir: str | Path | None = None,
    seed: int = 0,
    overwrite: bool = False,
    **overrides,
) -> BaichuanConfig:
    """A freshly initialised model dir (Baichuan's init) of a preset; returns its config.

    With `tokenizer_dir` the vocabulary size is read from the tokenizer and its files are
    copied in, so the dir is complete for generation and training.
    """
    if vocab_size is not None and tokenizer_dir is not None:
        raise InputError("give the vocabulary size or a tokenizer dir, not both")
    if tokenizer_dir is not None:
        vocab_size = tokenizer_vocab_size(tokenizer_dir)
    if vocab_size is not None:
        overrides["vocab_size"] = vocab_size
    config = preset_config(preset, **overrides)
    torch.manual_seed(seed)
    model = BaichuanForCausalLM(config)
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer_dir is not None:
            copy_side_files(tokenizer_dir, tmp)
    return config
