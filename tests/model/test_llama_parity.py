"""chuan's model against transformers' own LlamaForCausalLM, an independent implementation."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

import chuan  # noqa: F401  (registers the Auto classes)
from chuan.model.convert import convert
from chuan.model.modeling import CACHE_FIELD

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too

ATOL = 1e-4


def _decode_step_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a token-by-token pass that uses the model's KV cache (HF cache objects)."""
    past, steps = None, []
    for t in range(ids.shape[1]):
        out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{CACHE_FIELD: past})
        past = getattr(out, CACHE_FIELD)
        steps.append(out.logits[:, -1])
    return torch.stack(steps, dim=1)


def test_export_to_llama_gives_the_same_logits(tiny_dir, tmp_path):
    convert(tiny_dir, tmp_path / "llama", "llama")
    ours = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    theirs = LlamaForCausalLM.from_pretrained(tmp_path / "llama").eval()
    assert ours.config.norm_head  # the export must fold NormHead into lm_head
    ids = torch.randint(3, 4096, (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = theirs(ids).logits
        torch.testing.assert_close(ours(ids).logits, ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(_decode_step_logits(ours, ids), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(_decode_step_logits(theirs, ids), ref, atol=ATOL, rtol=0)


def test_round_trip_baichuan_llama_baichuan(tiny_dir, tmp_path):
    convert(tiny_dir, tmp_path / "llama", "llama")
    convert(tmp_path / "llama", tmp_path / "back", "baichuan")
    original = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert not back.config.norm_head  # the normalised head is now a plain one
    ids = torch.randint(3, 4096, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, original(ids).logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(
            _decode_step_logits(back, ids), original(ids).logits, atol=ATOL, rtol=0
        )


def test_left_padded_batch_matches_unpadded_rows(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    short, long = torch.tensor([[5, 6, 7]]), torch.tensor([[9, 10, 11, 12, 13]])
    batch = torch.tensor([[0, 0, 5, 6, 7], [9, 10, 11, 12, 13]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        logits = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(logits[0, 2:], model(short).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(logits[1], model(long).logits[0], atol=1e-5, rtol=0)


def test_hf_generate_matches_chuan_generate(tiny_dir):
    from chuan.infer.generate import SamplingConfig, generate

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    prompt = [1, 17, 300, 42]
    ours = generate(model, [prompt], SamplingConfig(max_new_tokens=12))[0]
    theirs = model.generate(
        torch.tensor([prompt]),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    assert theirs[0, len(prompt) :].tolist() == ours
