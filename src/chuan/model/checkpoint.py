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


def read_config_dict(model_dir: str | Path) -> dict:
    """The raw `config.json` of a model dir, with a clear error when it is missing."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {model_dir} is not a Hugging Face model dir")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _weight_files(model_dir: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = model_dir / index_name
        if index.is_file():
            with open(index, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            return [model_dir / s for s in shards]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            return [model_dir / name]
    raise FileNotFoundError(
        f"no weights in {model_dir}: expected model.safetensors, pytorch_model.bin or a "
        "sharded index"
    )


def read_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a model dir, from single or sharded safetensors / `.bin` files."""
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(Path(model_dir)):
        if file.suffix == ".safetensors":
            state.update(load_file(file))
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return {k: v for k, v in state.items() if not k.endswith(_SKIPPED_KEYS)}


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
    """Write config, sharded safetensors and side files atomically; returns `out_dir`."""
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(tmp)
        save_torch_state_dict(state_dict, tmp, max_shard_size=max_shard_size)
        copied = copy_side_files(side_files_from, tmp) if side_files_from else []
        if "generation_config.json" not in copied:
            GenerationConfig.from_model_config(config).save_pretrained(tmp)
    return Path(out_dir)


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
    raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {tokenizer_dir}")


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
        raise ValueError("give the vocabulary size or a tokenizer dir, not both")
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
