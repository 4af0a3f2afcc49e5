"""The Baichuan / Baichuan 2 decoder: pre-norm RMSNorm blocks, fused `W_pack` attention with
RoPE or ALiBi, SwiGLU, and a plain or NormHead output layer.

Parameter names are Baichuan's own (`model.layers.N.self_attn.W_pack.weight`, ...), so real
checkpoints load unchanged; the classes plug into transformers (`from_pretrained`,
`save_pretrained`, `generate`, PEFT) without remote code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

from chuan.errors import InputError
from chuan.model.config import BaichuanConfig
from chuan.model.loss import chunked_lm_loss
from chuan.model.positions import AttentionSpec, apply_rope, build_attention_spec

# transformers renamed the decoding cache from `past_key_values` to `cache` (5.25 passes
# `cache=` from `generate` and reads `outputs["cache"]`; earlier 5.x use the old name). chuan's
# forwards take both keywords and name the output field as the installed version does, so
# `generate`, PEFT and lm-eval keep the cache on every supported version, without warnings.
CACHE_FIELD = (
    "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
)


def _one_cache(cache: Cache | None, past_key_values: Cache | None) -> Cache | None:
    if cache is not None and past_key_values is not None:
        raise InputError("pass the decoding cache as `cache` or `past_key_values`, not both")
    return cache if cache is not None else past_key_values


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))


class RMSNorm(nn.Module):
    """`x * rsqrt(mean(x^2) + eps)` with the variance in fp32, then cast and scaled."""

    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _at_least_fp32(x)
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            normed = normed.to(self.weight.dtype)
        return self.weight * normed


class NormHead(nn.Linear):
    """Baichuan 2's output layer: logits against row-normalised embeddings.

    The raw weight is what is stored and trained; the forward always uses `normalize(W)`.
    Outside training the normalised copy is cached until the weight changes, instead of
    overwriting the parameter in place as Baichuan's code does (which breaks optimizer hooks).
    It subclasses `nn.Linear` so PEFT and quantizers see `in_features`/`out_features`.
    """

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__(hidden_size, vocab_size, bias=False)
        self._cache_key: tuple | None = None
        self._cached: torch.Tensor | None = None

    def normalized_weight(self) -> torch.Tensor:
        """`normalize(W)` by rows; without autograd, a cached copy (one extra `[V, h]`)."""
        if self.training or torch.is_grad_enabled():
            return self._normalize()
        # Inference tensors (made under `torch.inference_mode`) have no version counter.
        version = None if self.weight.is_inference() else self.weight._version
        key = (self.weight.data_ptr(), version, self.weight.dtype)
        if key != self._cache_key:
            self._cached, self._cache_key = self._normalize(), key
        return self._cached

    def _normalize(self) -> torch.Tensor:
        return F.normalize(_at_least_fp32(self.weight), dim=-1).to(self.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.normalized_weight())


class Attention(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split_sizes = (q_size, kv_size, kv_size)
        self.W_pack = nn.Linear(config.hidden_size, q_size + 2 * kv_size, bias=False)
        self.o_proj = nn.Linear(q_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, spec: AttentionSpec, cache: Cache | None) -> torch.Tensor:
        batch, q_len, _ = x.shape
        q, k, v = self.W_pack(x).split(self.split_sizes, dim=-1)
        q = q.view(batch, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, q_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        if spec.rope is not None:
            q, k = apply_rope(q, k, *spec.rope)
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        dtype = q.dtype
        if spec.upcast:
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=spec.mask, is_causal=spec.is_causal)
        y = y.to(dtype).transpose(1, 2).reshape(batch, q_len, -1)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: `down(silu(gate(x)) * up(x))`."""

    def __init__(self, config: BaichuanConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: BaichuanConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, spec: AttentionSpec, cache: Cache | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), spec, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class BaichuanPreTrainedModel(PreTrainedModel):
    config_class = BaichuanConfig
    config: BaichuanConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DecoderLayer"]
    _skip_keys_device_placement = ["cache", "past_key_values"]
    _supports_sdpa = True
    # Baichuan-7B (v1) checkpoints carry a RoPE buffer that chuan recomputes.
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        """Baichuan's init: N(0, 0.02) for linear and embedding weights, padding row zero,
        norms at one; NormHead keeps kaiming-uniform (its scale is normalised away)."""
        std = self.config.initializer_range
        if isinstance(module, NormHead):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(
                module.weight, "_is_hf_initialized", False
            ):
                init.zeros_(module.weight[module.padding_idx])
        elif isinstance(module, RMSNorm):
            init.ones_(module.weight)


class BaichuanModel(BaichuanPreTrainedModel):
    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        padding_idx = config.pad_token_id
        if padding_idx is not None and not 0 <= padding_idx < config.vocab_size:
            padding_idx = None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx)
        self.layers = nn.ModuleList(
            DecoderLayer(config, i) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        # Switched on by `activation_checkpointing_enable()`, which may also swap the function
        # (e.g. to offload activations to the host).
        self.gradient_checkpointing = False
        self._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        past_key_values: Cache | None = None,
        shared_prefix: int = 0,
        attention_spec: AttentionSpec | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        """`attention_mask` is 2-D segment ids (0 = padding; see `chuan.model.positions`)
        covering the cached and the new tokens. The cache comes as `cache` or, as before
        transformers 5.25, `past_key_values`; a cache passed in is read even with
        `use_cache=False` (prefix tuning's key/values arrive that way while training).
        `shared_prefix=N`: the first N positions are virtual tokens every packed document
        (or left-padded row) attends to, its positions counting on after them.
        `attention_spec` replaces all of that for a caller that lays out its rows' keys
        itself (the serving engine's slot pool: `chuan.model.positions.explicit_attention_spec`)."""
        if (input_ids is None) == (inputs_embeds is None):
            raise InputError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache is None:
            use_cache = self.config.use_cache and not self.training
        cache = _one_cache(cache, past_key_values)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if attention_mask is not None and attention_mask.ndim != 2:
            raise InputError(
                "attention_mask must be 2-D [batch, past + new tokens] (0 = padding, or one id "
                f"per packed document); got shape {tuple(attention_mask.shape)}"
            )
        batch, q_len, _ = inputs_embeds.shape
        spec = attention_spec or build_attention_spec(
            batch=batch,
            q_len=q_len,
            past_len=cache.get_seq_length() if cache is not None else 0,
            segments=attention_mask.long() if attention_mask is not None else None,
            position_ids=position_ids,
            position_encoding=self.config.position_encoding,
            num_heads=self.config.num_attention_heads,
            head_dim=self.config.head_dim,
            rope_theta=self.config.rope_theta,
            device=inputs_embeds.device,
            shared_prefix=shared_prefix,
        )
        x = inputs_embeds
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x = self._gradient_checkpointing_func(layer, x, spec, cache)
            else:
                x = layer(x, spec, cache)
        return BaseModelOutputWithPast(last_hidden_state=self.norm(x), **{CACHE_FIELD: cache})


@dataclass
class BaichuanCausalLMOutput(CausalLMOutputWithPast):
    """`CausalLMOutputWithPast` plus the detached loss parts a training loop logs."""

    ce_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    max_logit: torch.Tensor | None = None


def _require_chuan_quantizer(config: BaichuanConfig) -> None:
    """Refuse a `chuan quantize` dir that transformers would otherwise load with its int
    weights dropped and the dense ones left random."""
    quant = getattr(config, "quantization_config", None)
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    if method == "chuan":
        from transformers.quantizers.auto import AUTO_QUANTIZER_MAPPING

        if "chuan" not in AUTO_QUANTIZER_MAPPING:
            raise InputError(
                "this model dir was written by `chuan quantize`: load it with "
                "chuan.infer.loading.load_model, or `import chuan.infer.quantize` first"
            )


class BaichuanForCausalLM(BaichuanPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: BaichuanConfig):
        _require_chuan_quantizer(config)
        super().__init__(config)
        self.model = BaichuanModel(config)
        if config.norm_head:
            self.lm_head = NormHead(config.hidden_size, config.vocab_size)
        else:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def head_weight(self) -> torch.Tensor:
        """The matrix the logits are computed with (row-normalised for NormHead)."""
        if isinstance(self.lm_head, NormHead):
            return self.lm_head.normalized_weight()
        return self.lm_head.weight

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        loss_reduction: str = "mean",
        past_key_values: Cache | None = None,
        shared_prefix: int = 0,
        attention_spec: AttentionSpec | None = None,
        **kwargs,
    ) -> BaichuanCausalLMOutput:
        """With `labels` (shifted inside, -100 = no label) the loss is computed in chunks and
        `logits` is None: the full `[tokens x vocab]` logits are never built. The loss is the
        mean over labelled tokens, or with `loss_reduction="sum"` the sum, which a training
        loop divides by the token count of its whole (accumulated, distributed) batch. Without
        labels, `logits_to_keep=k` returns fp32 logits of the last k positions only (0 = all)."""
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=_one_cache(cache, past_key_values),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            shared_prefix=shared_prefix,
            attention_spec=attention_spec,
        )
        hidden = outputs.last_hidden_state
        cache = getattr(outputs, CACHE_FIELD)
        if labels is not None:
            lm = chunked_lm_loss(
                hidden[:, :-1],
                self.head_weight(),
                labels[:, 1:],
                z_loss_weight=self.config.z_loss_weight,
                z_loss_over_all_positions=self.config.z_loss_over_all_positions,
                reduction=loss_reduction,
            )
            return BaichuanCausalLMOutput(
                loss=lm.loss,
                **{CACHE_FIELD: cache},
                ce_loss=lm.ce,
                z_loss=lm.z_loss,
                max_logit=lm.max_logit,
            )
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = F.linear(hidden, self.head_weight()).float()
        return BaichuanCausalLMOutput(logits=logits, **{CACHE_FIELD: cache})


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """`[B]` index of each row's last real token (mask != 0), under left or right padding."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)


class BaichuanForSequenceClassification(BaichuanPreTrainedModel):
    """The decoder with a linear `score` head (`num_labels` outputs, 1 for a reward model)
    read at each row's last real token, as transformers' `LlamaForSequenceClassification`
    (which finds it through `pad_token_id`; Baichuan's pad may equal a real end token, so
    this class reads the attention mask, and the last position when there is none)."""

    def __init__(self, config: BaichuanConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.model = BaichuanModel(config)
        self.score = nn.Linear(config.hidden_size, self.num_labels, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        every_position: bool = False,
        **kwargs,
    ) -> SequenceClassifierOutputWithPast:
        """`logits` is fp32 `[batch, num_labels]`; `attention_mask` as for the decoder. With
        `every_position` it is the head at every position, `[batch, seq, num_labels]` (a
        PPO critic's per-token values)."""
        hidden = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
        ).last_hidden_state
        if every_position:
            return SequenceClassifierOutputWithPast(logits=self.score(hidden).float())
        if attention_mask is None:
            last = torch.full((hidden.shape[0],), hidden.shape[1] - 1, device=hidden.device)
        else:
            last = last_token_index(attention_mask)
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return SequenceClassifierOutputWithPast(logits=self.score(pooled).float())
