"""`BaichuanConfig`: Baichuan's own config fields plus the switches that tell the models apart.

The released `config.json` files do not say which position encoding or head they use: the
Baichuan 7B models carry `max_position_embeddings` (RoPE), the 13B models only
`model_max_length` (ALiBi), and Baichuan 2 (vocab 125,696) uses NormHead. When the explicit
fields `position_encoding` / `norm_head` are absent we infer them from exactly those facts,
never from the hidden size; chuan always writes the explicit fields and both length keys.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

from chuan.errors import InputError

BAICHUAN2_VOCAB_SIZE = 125_696
POSITION_ENCODINGS = ("rope", "alibi")
# Checked by type at construction, so a config.json with `"hidden_size": "big"` is an error
# naming the field rather than a TypeError deep inside the model.
_SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "model_max_length",
)
_NUMBER_FIELDS = ("rms_norm_eps", "rope_theta", "initializer_range", "z_loss_weight")


def swiglu_intermediate_size(hidden_size: int, multiple_of: int = 128) -> int:
    """The reports' FFN width rule: 8/3 x hidden, rounded up to a multiple of 128."""
    return multiple_of * math.ceil(8 * hidden_size / 3 / multiple_of)


class BaichuanConfig(PreTrainedConfig):
    """Configuration of a Baichuan / Baichuan 2 decoder (defaults: Baichuan2-7B)."""

    model_type = "baichuan"
    keys_to_ignore_at_inference = ["cache", "past_key_values"]

    vocab_size: int = BAICHUAN2_VOCAB_SIZE
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int | None = None
    model_max_length: int | None = None
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    position_encoding: str | None = None
    rope_theta: float = 10000.0
    norm_head: bool | None = None
    z_loss_weight: float = 0.0
    z_loss_over_all_positions: bool = False

    def __post_init__(self, **kwargs):
        # Baichuan2-13B stores `gradient_checkpointing` as a truthy 1-tuple; checkpointing is a
        # runtime switch (`gradient_checkpointing_enable()`), never a config field.
        kwargs.pop("gradient_checkpointing", None)
        # Released dirs point `auto_map` at remote code; chuan's classes replace it.
        kwargs.pop("auto_map", None)
        if self.position_encoding is None:
            only_model_max_length = (
                self.max_position_embeddings is None and self.model_max_length is not None
            )
            self.position_encoding = "alibi" if only_model_max_length else "rope"
        if self.norm_head is None:
            self.norm_head = self.vocab_size == BAICHUAN2_VOCAB_SIZE
        length = self.model_max_length or self.max_position_embeddings or 4096
        self.max_position_embeddings = self.model_max_length = length
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self._check_fields()
        super().__post_init__(**kwargs)

    def _check_fields(self) -> None:
        """Reject shapes and combinations the model cannot represent, with the field named."""
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(
                    f"field {name} must be a whole number of at least 1, got {value!r}"
                )
        for name in _NUMBER_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"field {name} must be a number of at least 0, got {value!r}")
        for name in ("tie_word_embeddings", "norm_head"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"field {name} must be true or false, got {getattr(self, name)!r}")
        if self.position_encoding not in POSITION_ENCODINGS:
            raise InputError(
                f"position_encoding must be one of {POSITION_ENCODINGS}, got "
                f"{self.position_encoding!r}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise InputError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise InputError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        if self.hidden_act != "silu":
            raise InputError(f"hidden_act must be 'silu' (SwiGLU), got {self.hidden_act!r}")
        if self.norm_head and self.tie_word_embeddings:
            raise InputError("norm_head and tie_word_embeddings cannot both be set")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
