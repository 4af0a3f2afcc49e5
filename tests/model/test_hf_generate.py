"""transformers' own `generate` on chuan models: every decoding step must see the whole cached
prefix. transformers 5.25 hands the cache to `forward` as `cache=` (earlier 5.x as
`past_key_values=`); a model that reads only one name silently decodes from one token. The
reference is a no-cache argmax loop, which never touches a cache, and llama2.c's golden output.
"""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import chuan  # noqa: F401  (registers the Auto classes)
from chuan.model import BaichuanForCausalLM, preset_config

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too

# Left-padded in one batch: lengths 5, 2 and 9.
PROMPTS = [[1, 17, 300, 42, 9], [1, 77], [1, 5, 6, 7, 8, 9, 10, 11, 12]]
NEW_TOKENS = 12
PAD = 0
SHAPES = {
    "rope-normhead": ("tiny", {}),
    "alibi-normhead": ("tiny-alibi", {}),
    "rope-gqa-tied": (
        "tiny",
        {"num_key_value_heads": 2, "norm_head": False, "tie_word_embeddings": True},
    ),
    "alibi-gqa-plain-head": ("tiny-alibi", {"num_key_value_heads": 1, "norm_head": False}),
}


def _model(name: str) -> BaichuanForCausalLM:
    """A random tiny model; init std 0.1 so that greedy outputs do not just repeat."""
    preset, overrides = SHAPES[name]
    torch.manual_seed(0)
    config = preset_config(preset, vocab_size=512, initializer_range=0.1, **overrides)
    return BaichuanForCausalLM(config).eval()


def argmax_without_cache(model, prompt: list[int], steps: int, eos: int | None = None) -> list:
    """Greedy decoding that runs the whole sequence through `model` at every step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
            if ids[-1] == eos:
                break
    return ids[len(prompt) :]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@contextmanager
def no_deprecation_messages():
    """Fail on any warning or transformers log line about the cache's keyword. transformers
    logs such messages once per process, so its once-cache is cleared first."""
    hf_logging.warning_once.cache_clear()
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    root = hf_logging.get_logger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        root.removeHandler(handler)
    messages = records + [str(w.message) for w in caught]
    assert not [m for m in messages if "deprecated" in m or "cache" in m.lower()], messages


def hf_greedy(model, prompts: list[list[int]], steps: int = NEW_TOKENS) -> list[list[int]]:
    ids, mask = left_padded(prompts)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            min_new_tokens=steps,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=None,
        )
    return out[:, ids.shape[1] :].tolist()


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_generate_equals_argmax_without_cache(name):
    model = _model(name)
    expected = [argmax_without_cache(model, p, NEW_TOKENS) for p in PROMPTS]
    assert len({tuple(e) for e in expected}) == len(PROMPTS)  # the rows really differ
    with no_deprecation_messages():
        got = hf_greedy(model, PROMPTS)
    assert got == expected


def test_generate_reproduces_llama2c_golden_output(test_data, tmp_path):
    """stories260K (GQA 8/4 heads, tied head) imported from an HF LLaMA dir: llama2.c's greedy
    200 tokens from BOS, through `AutoModelForCausalLM.generate`."""
    from chuan.model.convert import convert
    from helpers.llama2c import llama2c_to_hf_llama

    model_dir = test_data / "models" / "tinystories_260k"
    llama2c_to_hf_llama(model_dir / "stories260K.bin", tmp_path / "llama")
    convert(tmp_path / "llama", tmp_path / "baichuan", "baichuan")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "baichuan").eval()
    assert isinstance(model, BaichuanForCausalLM)
    expected = json.loads((model_dir / "expected_greedy_200_steps.ids.json").read_text())
    with torch.no_grad(), no_deprecation_messages():
        out = model.generate(
            torch.tensor([[1]]), max_new_tokens=200, do_sample=False, eos_token_id=2
        )
    assert out[0, 1:].tolist() == expected


def test_generate_through_a_peft_model():
    """A LoRA-wrapped model (non-zero adapter weights, so the adapter changes the output)
    decodes as the argmax loop over the same wrapped model."""
    peft = pytest.importorskip("peft", reason="peft is a dev dependency; install chuan[dev]")
    model = _model("rope-gqa-tied")
    wrapped = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["W_pack", "o_proj"])
    ).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in wrapped.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    expected = [argmax_without_cache(wrapped, p, NEW_TOKENS) for p in PROMPTS]
    with torch.no_grad(), wrapped.disable_adapter():
        base = [argmax_without_cache(wrapped, p, NEW_TOKENS) for p in PROMPTS]
    assert expected != base  # the adapter is live
    with no_deprecation_messages():
        got = hf_greedy(wrapped, PROMPTS)
    assert got == expected


def test_lm_eval_generate_until(test_data, tmp_path):
    """lm-evaluation-harness's HFLM `generate_until` (a batch of two contexts, left-padded by
    HFLM) returns the text of the argmax loop over the same token ids."""
    pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency; install chuan[dev]")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from chuan.infer.loading import load_model, load_saved_tokenizer
    from chuan.model.checkpoint import init_model_dir
    from chuan.tokenizer.hf import write_tokenizer_dir
    from chuan.tokenizer.spm import load_proto

    tok_dir = write_tokenizer_dir(
        tmp_path / "tok", load_proto(test_data / "tokenizers" / "llama" / "tokenizer.model")
    )
    init_model_dir(tmp_path / "model", "tiny", tokenizer_dir=tok_dir, seed=5)
    model, tokenizer = load_model(tmp_path / "model"), load_saved_tokenizer(tmp_path / "model")
    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=2)
    contexts = ["The cat sat on the", "起初，神创造天地。地是空虚混沌，渊面黑暗"]
    gen_kwargs = {"until": ["\x00never"], "max_gen_toks": 10, "do_sample": False}
    requests = [
        Instance("generate_until", {}, (context, dict(gen_kwargs)), idx=i)
        for i, context in enumerate(contexts)
    ]
    with no_deprecation_messages():
        got = lm.generate_until(requests)
    eos = tokenizer.eos_token_id
    expected = [
        lm.tok_decode(argmax_without_cache(model, lm.tok_encode(c), 10, eos=eos)) for c in contexts
    ]
    assert got == expected
