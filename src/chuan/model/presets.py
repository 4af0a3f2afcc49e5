"""Named model shapes: the four released Baichuan models and small ones for tests and CPUs.

Released shapes follow the reports and the `config.json` files of the Hugging Face repos
`baichuan-inc/Baichuan-7B`, `Baichuan-13B-Base`, `Baichuan2-7B-Base` and `Baichuan2-13B-Base`;
`tiny` / `tiny-alibi` are ours, sized to train in minutes on two CPU cores.
"""

from __future__ import annotations

from chuan.errors import InputError
from chuan.model.config import BaichuanConfig, swiglu_intermediate_size

_BAICHUAN_7B = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    position_encoding="rope",
)
_BAICHUAN_13B = dict(
    hidden_size=5120,
    intermediate_size=13696,
    num_hidden_layers=40,
    num_attention_heads=40,
    position_encoding="alibi",
)
_TINY = dict(
    hidden_size=128,
    intermediate_size=swiglu_intermediate_size(128),
    num_hidden_layers=4,
    num_attention_heads=4,
    vocab_size=4096,
    max_position_embeddings=512,
)

PRESETS: dict[str, dict] = {
    "baichuan-7b": {**_BAICHUAN_7B, "vocab_size": 64000, "norm_head": False},
    "baichuan-13b": {**_BAICHUAN_13B, "vocab_size": 64000, "norm_head": False},
    "baichuan2-7b": {**_BAICHUAN_7B, "vocab_size": 125696, "norm_head": True},
    "baichuan2-13b": {**_BAICHUAN_13B, "vocab_size": 125696, "norm_head": True},
    "tiny": {**_TINY, "position_encoding": "rope", "norm_head": True},
    "tiny-alibi": {**_TINY, "position_encoding": "alibi", "norm_head": True},
}


def preset_config(name: str, **overrides) -> BaichuanConfig:
    """The config of preset `name`, with any field overridden (e.g. `vocab_size`)."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return BaichuanConfig(**{**PRESETS[name], **overrides})


def parameter_count(config: BaichuanConfig, *, non_embedding: bool = False) -> int:
    """Exact parameter count from the shapes, `2Vh + L(4h^2 + 3hF + 2h) + h` for Baichuan.

    `non_embedding=True` drops the embedding and output matrices (the count used by
    scaling-law fits).
    """
    h, f, n_layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * config.head_dim
    attention = h * (h + 2 * kv) + h * h
    per_layer = attention + 3 * h * f + 2 * h
    body = n_layers * per_layer + h
    if non_embedding:
        return body
    heads = 1 if config.tie_word_embeddings else 2
    return body + heads * config.vocab_size * h


def training_flops_per_token(config: BaichuanConfig, seq_len: int) -> float:
    """Model FLOPs per trained token for MFU, the PaLM convention that torchtitan and nanoGPT
    use: `6N` for the weight matmuls (the embedding lookup excluded) plus `12 L h T` for the
    attention scores and values (not halved for causality)."""
    n = parameter_count(config) - config.vocab_size * config.hidden_size
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq_len
