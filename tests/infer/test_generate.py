"""Generation: the preallocated KV cache against full forwards, batching against single
prompts, the sampling processors against transformers' own, seeds, stop ids, defaults.
(Text streaming and chat are in test_chat.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from chuan.infer.cache import KVCache
from chuan.infer.generate import BatchDecoder, SamplingConfig, generate, stream_tokens
from chuan.infer.sampling import (
    BAICHUAN2_CHAT_DEFAULTS,
    FilterParams,
    TokenChooser,
    apply_repetition_penalty,
    filter_logits,
    generation_defaults,
)
from chuan.model import BaichuanForCausalLM, preset_config

pytestmark = pytest.mark.interop  # CI runs these on the oldest supported transformers too

PROMPTS = [[1, 17, 300, 42, 9], [1, 77], [1, 5, 6, 7, 8, 9, 10, 11, 12]]
SHAPES = {
    "rope": ("tiny", {}),
    "alibi": ("tiny-alibi", {}),
    "rope-gqa": ("tiny", {"num_key_value_heads": 2}),
    "alibi-gqa-plain-head": ("tiny-alibi", {"num_key_value_heads": 1, "norm_head": False}),
}


def _model(name: str) -> BaichuanForCausalLM:
    """A random tiny model; init std 0.1 (not 0.02) so greedy outputs do not just repeat."""
    preset, overrides = SHAPES[name]
    torch.manual_seed(0)
    config = preset_config(preset, vocab_size=512, initializer_range=0.1, **overrides)
    return BaichuanForCausalLM(config).eval()


@pytest.fixture(scope="module", params=sorted(SHAPES))
def model(request) -> BaichuanForCausalLM:
    return _model(request.param)


def _full_forward_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding without any cache: the whole sequence through the model each step."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


def test_cached_greedy_equals_full_forward_argmax(model):
    got = [generate(model, [p], SamplingConfig(max_new_tokens=24))[0] for p in PROMPTS]
    assert got == [_full_forward_greedy(model, p, 24) for p in PROMPTS]
    assert len(set(got[0])) > 8  # a real test: the output does not just repeat one token


def test_batch_of_different_lengths_equals_each_alone(model):
    configs = [
        SamplingConfig(max_new_tokens=20),
        SamplingConfig(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, seed=5),
        SamplingConfig(max_new_tokens=16, temperature=1.2, repetition_penalty=1.3, seed=7),
    ]
    batched = generate(model, PROMPTS, configs)
    alone = [generate(model, [p], c)[0] for p, c in zip(PROMPTS, configs, strict=True)]
    assert batched == alone
    assert [len(x) for x in batched] == [20, 12, 16]


def test_real_tiny_llama_golden_output_in_a_batch(test_data, tmp_path):
    """stories260K (GQA 8/4 heads, tied head) reproduces llama2.c's greedy 200 tokens from
    BOS, also as the short row of a left-padded batch."""
    from chuan.model.convert import load_as_baichuan
    from helpers.llama2c import llama2c_to_hf_llama

    model_dir = test_data / "models" / "tinystories_260k"
    llama2c_to_hf_llama(model_dir / "stories260K.bin", tmp_path / "llama")
    model = load_as_baichuan(tmp_path / "llama").eval()
    expected = json.loads((model_dir / "expected_greedy_200_steps.ids.json").read_text())
    cfg = SamplingConfig(max_new_tokens=200, stop_token_ids=(2,))
    got = generate(model, [[1], [1, *expected[:30]]], cfg)
    assert got[0] == expected
    assert got[1][:170] == expected[30:]


def test_kv_cache_writes_in_place_and_returns_views():
    cache = KVCache(num_layers=2, max_len=5)
    first = torch.randn(1, 2, 3, 4)
    keys, values = cache.update(first, -first, 0)
    assert cache.get_seq_length() == 3 and keys.shape == (1, 2, 3, 4)
    buffer = cache.keys[0].data_ptr()
    step = torch.randn(1, 2, 1, 4)
    keys, values = cache.update(step, -step, 0)
    assert cache.keys[0].data_ptr() == buffer == keys.data_ptr()  # no reallocation, a view
    assert torch.equal(keys, torch.cat([first, step], dim=2)) and torch.equal(values, -keys)
    assert cache.get_seq_length(1) == 0
    cache.update(step, step, 0)
    with pytest.raises(ValueError, match="holds 5 positions; layer 0 needs 6"):
        cache.update(step, step, 0)


def test_repetition_penalty_matches_transformers_and_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [1.0, 1.0, -2.0, 0.0]])
    history = torch.tensor([[0, 1, 1], [2, 3, 2]])
    penalty = torch.tensor([2.0, 1.5])
    got = apply_repetition_penalty(logits, history, penalty)
    hand = torch.tensor([[1.0, -2.0, 0.5, 3.0], [1.0, 1.0, -3.0, 0.0]])
    torch.testing.assert_close(got, hand)
    for row in range(2):
        theirs = RepetitionPenaltyLogitsProcessor(penalty[row].item())
        ref = theirs(history[row : row + 1], logits[row : row + 1].clone())
        torch.testing.assert_close(got[row : row + 1], ref)


def test_filters_match_transformers_warpers_per_row():
    rows = [(0.7, 0, 0.9), (1.0, 10, 1.0), (1.5, 50, 0.6), (0.3, 3, 0.5), (2.0, 0, 1.0)]
    logits = torch.randn(len(rows), 1000, generator=torch.Generator().manual_seed(0)) * 3
    configs = [SamplingConfig(temperature=t, top_k=k, top_p=p) for t, k, p in rows]
    got = filter_logits(logits, FilterParams.from_configs(configs, torch.device("cpu")))
    dummy_ids = torch.zeros(1, 1, dtype=torch.long)
    for row, (t, k, p) in enumerate(rows):
        ref = TemperatureLogitsWarper(t)(dummy_ids, logits[row : row + 1].clone())
        if k:
            ref = TopKLogitsWarper(k)(dummy_ids, ref)
        if p < 1:
            ref = TopPLogitsWarper(p)(dummy_ids, ref)
        torch.testing.assert_close(got[row : row + 1], ref)
    kept = torch.isfinite(got).sum(-1).tolist()
    assert kept[1] == 10 and kept[2] <= 50 and kept[3] <= 3 and kept[4] == 1000


def test_top_p_by_hand():
    """probs 0.5, 0.3, 0.2: top-p 0.8 keeps two tokens, 0.81 keeps three, 0.3 keeps one."""
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log()
    for top_p, kept in [(0.8, 2), (0.81, 3), (0.3, 1)]:
        params = FilterParams.from_configs([SamplingConfig(temperature=1, top_p=top_p)], "cpu")
        assert torch.isfinite(filter_logits(logits, params)).sum().item() == kept


def test_draws_follow_the_filtered_distribution():
    """2,000 seeded rows drawing from probs 0.5/0.3/0.2 with top-k 2: about 5/8 and 3/8."""
    configs = [SamplingConfig(temperature=1.0, top_k=2, seed=s) for s in range(2000)]
    logits = torch.tensor([[0.5, 0.3, 0.2]]).log().expand(2000, -1)
    chooser = TokenChooser(configs, torch.device("cpu"))
    counts = torch.bincount(chooser.choose(logits, logits[:, :0].long()), minlength=3)
    assert counts[2] == 0 and abs(counts[0].item() / 2000 - 0.625) < 0.035


def test_unfiltered_draws_follow_softmax_and_ignore_the_batch():
    """Rows without top-k/top-p draw over the vocabulary unsorted: 4,000 seeded rows from
    probs 0.2/0.5/0.3 at T 1 land about 20/50/30%, -inf logits are never drawn, and a row
    draws the same tokens alone as beside filtered and greedy rows."""
    logits = torch.tensor([[0.2, 0.5, 0.3, 0.0]]).log().expand(4000, -1)
    configs = [SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, seed=s) for s in range(4000)]
    chosen = TokenChooser(configs, torch.device("cpu")).choose(logits, logits[:, :0].long())
    shares = torch.bincount(chosen, minlength=4).double() / 4000
    assert shares[3] == 0
    torch.testing.assert_close(
        shares[:3], torch.tensor([0.2, 0.5, 0.3]).double(), atol=0.03, rtol=0
    )
    free = SamplingConfig(temperature=0.7, top_k=0, top_p=1.0, seed=5)
    mixed = [SamplingConfig(temperature=0.7, top_k=2, seed=6), free, SamplingConfig()]
    batch = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    alone, beside = TokenChooser([free], "cpu"), TokenChooser(mixed, "cpu")
    for _ in range(20):
        one = alone.choose(batch[1:2], batch[:1, :0].long())
        assert beside.choose(batch, batch[:, :0].long())[1] == one[0]


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    model = _model("rope")
    cfg = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=50, seed=11)
    first = generate(model, [PROMPTS[0]], cfg)[0]
    assert generate(model, [PROMPTS[0]], cfg)[0] == first
    other = SamplingConfig(max_new_tokens=16, temperature=1.0, top_k=50, seed=12)
    assert generate(model, [PROMPTS[0]], other)[0] != first
    assert list(stream_tokens(model, PROMPTS[0], cfg)) == first


def test_stop_ids_end_a_row_without_being_returned():
    model = _model("alibi")
    free = generate(model, [PROMPTS[0]], SamplingConfig(max_new_tokens=20))[0]
    cut = next(i for i in range(3, 20) if free[i] not in free[:i])
    cfg = SamplingConfig(max_new_tokens=20, stop_token_ids=(free[cut], 511))
    assert generate(model, [PROMPTS[0]], cfg)[0] == free[:cut]

    decoder = BatchDecoder(model, PROMPTS[:2], [cfg, SamplingConfig(max_new_tokens=3)])
    steps = [decoder.step() for _ in range(cut + 1)]
    assert [s[0] for s in steps] == free[:cut] + [None]
    assert [s[1] for s in steps[3:]] == [None] * (cut - 2)
    assert decoder.done and decoder.finish_reasons == ["stop", "length"]
    assert decoder.step() == [None, None]


def test_finish_stops_one_row_and_the_rest_continue():
    model = _model("rope")
    cfg = SamplingConfig(max_new_tokens=6)
    decoder = BatchDecoder(model, PROMPTS[:2], [cfg, cfg])
    decoder.step()
    decoder.finish(0)
    rest = [decoder.step() for _ in range(5)]
    assert all(s[0] is None for s in rest) and all(s[1] is not None for s in rest)
    assert decoder.done and decoder.finish_reasons == ["finished", "length"]
    alone = generate(model, [PROMPTS[1]], cfg)[0]
    assert [s[1] for s in rest] == alone[1:]


def test_bad_input_is_refused_with_a_reason():
    model = _model("rope")
    cfg = SamplingConfig()
    with pytest.raises(ValueError, match=r"list of token-id lists: wrap one prompt as \[ids\]"):
        generate(model, [1, 5, 9], cfg)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(model, [[1], []], cfg)
    with pytest.raises(ValueError, match=r"prompt 0 has token ids outside .*\[512\]"):
        generate(model, [[1, 512]], cfg)
    with pytest.raises(ValueError, match="2 prompts but 1 sampling configs"):
        BatchDecoder(model, [[1], [2]], [cfg])
    with pytest.raises(ValueError, match="top_p must be in"):
        SamplingConfig(top_p=0)


def test_generation_defaults_from_the_dir_field_by_field(tmp_path):
    assert generation_defaults(tmp_path) == SamplingConfig(**BAICHUAN2_CHAT_DEFAULTS)
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"eos_token_id": [2, 7], "top_k": 9, "do_sample": True}))
    cfg = generation_defaults(tmp_path)
    assert (cfg.top_k, cfg.temperature, cfg.stop_token_ids) == (9, 0.3, (2, 7))
    path.write_text(json.dumps({"do_sample": False, "temperature": 0.7, "max_new_tokens": 5}))
    cfg = generation_defaults(tmp_path)
    assert (cfg.temperature, cfg.max_new_tokens, cfg.stop_token_ids) == (0.0, 5, (2,))
    path.write_text(json.dumps({"top_p": 1.5}))
    with pytest.raises(ValueError, match=r"generation_config.json: top_p must be in \(0, 1\]"):
        generation_defaults(tmp_path)
