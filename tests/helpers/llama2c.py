"""Convert a llama2.c legacy checkpoint into a Hugging Face ``LlamaForCausalLM`` model directory.

Karpathy's llama2.c legacy (version 0) ``.bin`` format is a header of seven int32 values::

    dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len

followed by float32 tensors, each stacked over layers where it has an ``[L, ...]`` shape::

    tok_embeddings [vocab, dim]
    attention_norm [L, dim]
    wq [L, dim, dim], wk [L, kv_dim, dim], wv [L, kv_dim, dim], wo [L, dim, dim]
    ffn_norm [L, dim]
    w1 [L, hidden, dim], w2 [L, dim, hidden], w3 [L, hidden, dim]
    norm [dim]
    freq_cis_real [seq_len, head_dim // 2], freq_cis_imag [seq_len, head_dim // 2]
    wcls [vocab, dim]  (only when vocab_size is negative, i.e. the classifier is not shared)

where ``head_dim = dim // n_heads`` and ``kv_dim = n_kv_heads * head_dim``. Matrices are stored as
``torch.nn.Linear`` weights (``[out, in]``); w1/w3/w2 are the gate/up/down projections. The RoPE
tables are dropped: HF recomputes them (theta 10000).

llama2.c, like Meta's reference code, rotates interleaved pairs ``(x0, x1), (x2, x3), ...`` of each
head, whereas HF LLaMA's ``rotate_half`` pairs ``x[i]`` with ``x[i + head_dim // 2]``. The rows of
wq and wk are therefore permuted per head, exactly as transformers' ``convert_llama_weights_to_hf``
does, so that HF's half-split rotation computes the same attention scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig

_HEADER_INTS = 7


def _permute_rope(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder each head's rows from interleaved RoPE pairs to HF's half-split layout."""
    out_dim, in_dim = w.shape
    head_dim = out_dim // n_heads
    return w.view(n_heads, head_dim // 2, 2, in_dim).transpose(1, 2).reshape(out_dim, in_dim)


def llama2c_to_hf_llama(bin_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for ``bin_path`` into ``out_dir``.

    Returns ``out_dir`` as a ``Path``; it loads with ``LlamaForCausalLM.from_pretrained``.
    """
    raw = Path(bin_path).read_bytes()
    header = torch.frombuffer(bytearray(raw[: 4 * _HEADER_INTS]), dtype=torch.int32).tolist()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab_size, seq_len = header
    shared_classifier = vocab_size > 0
    vocab_size = abs(vocab_size)
    head_dim = dim // n_heads
    kv_dim = n_kv_heads * head_dim

    data = torch.frombuffer(bytearray(raw[4 * _HEADER_INTS :]), dtype=torch.float32)
    offset = 0

    def take(*shape: int) -> torch.Tensor:
        nonlocal offset
        n = math.prod(shape)
        t = data[offset : offset + n].view(shape)
        offset += n
        return t

    embed = take(vocab_size, dim)
    attn_norm = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, kv_dim, dim)
    wv = take(n_layers, kv_dim, dim)
    wo = take(n_layers, dim, dim)
    ffn_norm = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    final_norm = take(dim)
    take(seq_len, head_dim // 2)  # freq_cis_real
    take(seq_len, head_dim // 2)  # freq_cis_imag
    wcls = None if shared_classifier else take(vocab_size, dim)
    if offset != data.numel():
        raise ValueError(f"{bin_path}: {data.numel() - offset} unexpected trailing floats")

    state = {"model.embed_tokens.weight": embed, "model.norm.weight": final_norm}
    if wcls is not None:
        state["lm_head.weight"] = wcls
    for i in range(n_layers):
        p = f"model.layers.{i}."
        state |= {
            p + "input_layernorm.weight": attn_norm[i],
            p + "self_attn.q_proj.weight": _permute_rope(wq[i], n_heads),
            p + "self_attn.k_proj.weight": _permute_rope(wk[i], n_kv_heads),
            p + "self_attn.v_proj.weight": wv[i],
            p + "self_attn.o_proj.weight": wo[i],
            p + "post_attention_layernorm.weight": ffn_norm[i],
            p + "mlp.gate_proj.weight": w1[i],
            p + "mlp.up_proj.weight": w3[i],
            p + "mlp.down_proj.weight": w2[i],
        }

    config = LlamaConfig(
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        vocab_size=vocab_size,
        max_position_embeddings=seq_len,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=shared_classifier,
        bos_token_id=1,
        eos_token_id=2,
        dtype="float32",
        architectures=["LlamaForCausalLM"],
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(
        {k: v.contiguous().clone() for k, v in state.items()},
        out / "model.safetensors",
        metadata={"format": "pt"},
    )
    return out
