"""Position encodings and masks against explicit formulas written out here."""

import math

import pytest
import torch

from chuan.model import BaichuanForCausalLM, preset_config
from chuan.model.positions import alibi_slopes, build_attention_spec, segment_positions


def test_alibi_slopes_for_40_heads_match_baichuan_13b():
    slopes = alibi_slopes(40)
    assert slopes[:32] == pytest.approx([2 ** (-k / 4) for k in range(1, 33)])
    assert slopes[32:] == pytest.approx([2 ** (-(2 * m + 1) / 8) for m in range(8)])
    assert slopes[32:34] == pytest.approx([0.9170, 0.7711], abs=1e-4)
    assert alibi_slopes(8) == pytest.approx([2 ** (-(i + 1)) for i in range(8)])


def test_segment_positions_restart_per_document():
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0], [0, 0, 1, 1, 1, 1, 1, 1]])
    assert segment_positions(segments).tolist() == [
        [0, 1, 2, 0, 1, 0, 0, 1],
        [0, 1, 0, 1, 2, 3, 4, 5],
    ]


def _alibi_spec(*, q_len: int, past_len: int, num_heads: int, head_dim: int):
    return build_attention_spec(
        batch=1,
        q_len=q_len,
        past_len=past_len,
        segments=None,
        position_ids=None,
        position_encoding="alibi",
        num_heads=num_heads,
        head_dim=head_dim,
        rope_theta=1e4,
        device=torch.device("cpu"),
    )


def _reference_alibi_attention(attn, x: torch.Tensor, absolute: bool) -> torch.Tensor:
    """Softmax(qk^T/sqrt(d) + bias) v with the bias matrix spelled out element by element."""
    batch, length, hidden = x.shape
    heads, dim = attn.num_heads, attn.head_dim
    q, k, v = attn.W_pack(x).split(hidden, dim=-1)
    q, k, v = (t.view(batch, length, heads, dim).transpose(1, 2) for t in (q, k, v))
    bias = torch.full((heads, length, length), float("-inf"))
    for h, slope in enumerate(alibi_slopes(heads)):
        for i in range(length):
            for j in range(i + 1):
                # Baichuan's inference code uses slope*j (no -i): the same softmax per row.
                bias[h, i, j] = slope * j if absolute else slope * (j - i)
    scores = q @ k.transpose(-1, -2) / math.sqrt(dim) + bias
    y = scores.softmax(-1) @ v
    return attn.o_proj(y.transpose(1, 2).reshape(batch, length, hidden))


@pytest.mark.parametrize("absolute", [False, True])
def test_alibi_attention_equals_explicit_bias_matrix(absolute):
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config("tiny-alibi", num_attention_heads=8)).eval()
    attn = model.model.layers[0].self_attn
    x = torch.randn(2, 11, model.config.hidden_size)
    spec = _alibi_spec(q_len=11, past_len=0, num_heads=8, head_dim=attn.head_dim)
    with torch.no_grad():
        torch.testing.assert_close(
            attn(x, spec, None), _reference_alibi_attention(attn, x, absolute), atol=1e-5, rtol=0
        )


@pytest.mark.parametrize("preset", ["tiny", "tiny-alibi"])
def test_packed_row_equals_documents_run_alone(preset):
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config(preset)).eval()
    docs = [torch.randint(3, 4096, (n,)) for n in (7, 12, 5)]
    row = torch.cat(docs)[None]
    segments = torch.cat([torch.full((len(d),), i + 1) for i, d in enumerate(docs)])[None]
    with torch.no_grad():
        packed = model(row, attention_mask=segments).logits[0]
        start = 0
        for doc in docs:
            alone = model(doc[None]).logits[0]
            torch.testing.assert_close(packed[start : start + len(doc)], alone, atol=1e-5, rtol=0)
            start += len(doc)


@pytest.mark.parametrize("preset", ["tiny", "tiny-alibi"])
def test_packed_loss_equals_per_document_losses(preset):
    """Training on a packed row: gradients never cross a document boundary."""
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config(preset))
    docs = [torch.randint(3, 4096, (n,)) for n in (9, 6)]
    row = torch.cat(docs)[None]
    segments = torch.tensor([[1] * 9 + [2] * 6])
    labels = row.clone()
    labels[0, 9] = -100  # the first token of document 2 is not predicted from document 1
    packed = model(row, attention_mask=segments, labels=labels).loss
    per_doc = [model(d[None], labels=d[None]).loss * (len(d) - 1) for d in docs]
    torch.testing.assert_close(packed, sum(per_doc) / 13, atol=1e-5, rtol=0)


def test_bf16_autocast_keeps_alibi_bias_in_fp32():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec = _alibi_spec(q_len=1, past_len=4095, num_heads=40, head_dim=128)
    assert spec.mask.dtype == torch.float32 and spec.upcast
    # slope_0 * (0 - 4095) is exact in fp32 but would round to a multiple of 16 in bf16
    assert spec.mask[0, 0, 0, 0].item() == pytest.approx(-(2**-0.25) * 4095, rel=1e-7)
