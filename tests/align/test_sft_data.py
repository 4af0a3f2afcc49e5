"""SFT rows: mixing by weight, cutting to fit, first-fit decreasing packing, and the packed
loss, which must equal each conversation run alone (the segment ids keep them apart)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from chuan.align.conversations import Conversation, read_conversations
from chuan.align.sft_config import DataSource
from chuan.align.sft_data import (
    SFTDataStats,
    encode_fitting,
    mix,
    pack_first_fit,
    padding_tokens,
    render_sample,
    to_rows,
)
from chuan.infer.loading import load_model
from chuan.model.loss import IGNORE_INDEX
from chuan.tokenizer.chat_templates import get_template
from chuan.train.distributed import World
from chuan.train.loop import train_step

TRANSLATIONS = (
    Path(__file__).parents[2] / "src" / "chuan" / "assets" / "sft" / "translate_zh_en.jsonl"
)


def _conversation(n: int, origin: str = "") -> Conversation:
    return Conversation(messages=(("user", f"q{n}"), ("assistant", f"a{n}")), origin=origin)


@pytest.fixture(scope="module")
def translations():
    conversations, rejects = read_conversations(TRANSLATIONS)
    assert len(conversations) == 1000 and not rejects
    return conversations


# --- mixing ---------------------------------------------------------------------------------


def test_mix_takes_the_first_source_whole_and_the_others_by_weight():
    domain = [_conversation(i, "d") for i in range(10)]
    general = [_conversation(100 + i, "g") for i in range(25)]
    sources = [DataSource("d", weight=1.0), DataSource("g", weight=5.0)]
    mixed = mix(sources, [domain, general], seed=0)
    assert len(mixed) == 60
    assert sorted(c.messages for c in mixed if c.origin == "d") == sorted(
        c.messages for c in domain
    )  # each once
    drawn = [c for c in mixed if c.origin == "g"]
    assert len(drawn) == 50
    # 50 draws from 25: two full passes, so each general sample exactly twice
    assert all(drawn.count(c) == 2 for c in general)
    assert mix(sources, [domain, general], seed=0) == mixed  # seeded
    assert mix(sources, [domain, general], seed=1) != mixed
    # 1:0.5 draws 5 distinct general samples; no weights concatenate everything
    half = mix([DataSource("d", weight=2.0), DataSource("g", weight=1.0)], [domain, general], 0)
    assert sum(c.origin == "g" for c in half) == 5
    assert len({c for c in half if c.origin == "g"}) == 5
    assert len(mix([DataSource("d"), DataSource("g")], [domain, general], 0)) == 35


# --- fitting --------------------------------------------------------------------------------


def test_long_conversations_lose_their_oldest_rounds_or_are_dropped(sft_tokenizer):
    template = get_template("baichuan2", sft_tokenizer)
    short, long_answer = "起初神创造天地", "神说要有光就有了光" * 20
    rounds = (("user", short), ("assistant", short)) * 3 + (("user", short), ("assistant", "好"))
    fits_last_round_only = Conversation(rounds, system="sys")
    too_long = Conversation((("user", short), ("assistant", long_answer)))
    stats = SFTDataStats()
    (alone,) = template.encode([("sys", rounds[-2:])])
    out = encode_fitting(
        template,
        [fits_last_round_only, too_long, _conversation(1)],
        len(alone.input_ids),
        mask_history=False,
        stats=stats,
    )
    assert (stats.truncated, stats.dropped_too_long) == (1, 1)
    assert [c for c, _ in out] == [fits_last_round_only, _conversation(1)]
    # The answer is kept whole: the cut sample is exactly the last round with the system.
    assert out[0][1] == alone


# --- packing --------------------------------------------------------------------------------


def test_first_fit_decreasing_by_hand():
    # Sorted: 7 (a) 6 (b) 5 (c) 4 (d) 3 (e) 2 (f); bins of 10:
    # 7 -> bin0 (3 left); 6 -> bin1 (4); 5 -> bin2 (5); 4 -> bin1 (0); 3 -> bin0 (0); 2 -> bin2
    lengths = [4, 7, 2, 5, 6, 3]
    assert pack_first_fit(lengths, 10) == [[1, 5], [4, 0], [3, 2]]
    assert pack_first_fit([10, 10, 1], 10) == [[0], [1], [2]]


def test_packing_cuts_padding(sft_tokenizer, translations):
    template = get_template("baichuan2", sft_tokenizer)
    samples = [
        s
        for _, s in encode_fitting(
            template, translations, 256, mask_history=False, stats=SFTDataStats()
        )
    ]
    stats = SFTDataStats()
    packed = to_rows(samples, 256, packing=True, shuffle=True, seed=0, stats=stats)
    single = to_rows(samples, 256, packing=False, shuffle=True, seed=0)
    assert stats.samples == len(samples) and stats.rows == len(packed) < len(samples) / 4
    assert stats.tokens == sum(len(s.input_ids) for s in samples)
    assert stats.tokens / stats.row_capacity > 0.95
    assert padding_tokens(single, 8) > 3 * padding_tokens(packed, 8)


def _alone_logits(model, sample) -> torch.Tensor:
    return model(input_ids=torch.tensor([sample.input_ids])).logits[0]


@torch.no_grad()
def test_a_packed_row_equals_its_samples_run_alone(base_dir, sft_tokenizer, translations):
    model = load_model(base_dir, device="cpu", dtype="fp32")
    template = get_template("baichuan2", sft_tokenizer)
    samples = [
        s
        for _, s in encode_fitting(
            template, translations[:40], 128, mask_history=False, stats=SFTDataStats()
        )
    ]
    rows = to_rows(samples, 128, packing=True, shuffle=False, seed=0)
    batch = rows.batch(range(len(rows)))
    assert batch.segment_ids.max() >= 3  # several conversations per row
    logits = model(input_ids=batch.input_ids, attention_mask=batch.segment_ids).logits
    plain = model(input_ids=batch.input_ids).logits  # no segment ids: attends across samples
    by_ids = {tuple(s.input_ids): s for s in samples}
    differs = 0
    for row in range(len(rows)):
        segments = batch.segment_ids[row]
        for segment in range(1, int(segments.max()) + 1):
            where = (segments == segment).nonzero().squeeze(1)
            ids = tuple(batch.input_ids[row, where].tolist())
            alone = _alone_logits(model, by_ids[ids])
            torch.testing.assert_close(logits[row, where], alone, atol=1e-5, rtol=1e-5)
            # the per-sample loss too
            labels = torch.tensor(by_ids[ids].labels[1:])
            packed_loss = F.cross_entropy(logits[row, where][:-1], labels, reduction="sum")
            alone_loss = F.cross_entropy(alone[:-1], labels, reduction="sum")
            torch.testing.assert_close(packed_loss, alone_loss, atol=1e-5, rtol=1e-5)
            if segment > 1:
                differs += not torch.allclose(plain[row, where], alone, atol=1e-3)
    assert differs > 0  # without segment ids the comparison fails: the test can fail


def test_loss_is_the_mean_over_answer_tokens_of_the_global_batch(
    base_dir, sft_tokenizer, translations
):
    """By hand: log-softmax of each position's next-token logits, at the trained labels only,
    averaged over all trained tokens of all micro-batches together."""
    model = load_model(base_dir, device="cpu", dtype="fp32").train()
    template = get_template("chatml", sft_tokenizer)
    samples = [
        s
        for _, s in encode_fitting(
            template, translations[:24], 128, mask_history=False, stats=SFTDataStats()
        )
    ]
    rows = to_rows(samples, 128, packing=False, shuffle=False, seed=0)
    batches = [rows.batch(range(0, 5)), rows.batch(range(5, 12))]
    stats = train_step(model, batches, World(0, 1, 0, torch.device("cpu")), None)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.segment_ids).logits
            logp = torch.log_softmax(logits.double(), -1)
            for row in range(batch.input_ids.shape[0]):
                for pos in range(1, batch.input_ids.shape[1]):
                    label = int(batch.labels[row, pos])
                    if label != IGNORE_INDEX:
                        total -= float(logp[row, pos - 1, label])
                        count += 1
    trained = sum(sum(label != IGNORE_INDEX for label in s.labels[1:]) for s in samples[:12])
    assert count == trained > 0
    assert stats["loss"] == pytest.approx(total / count, rel=1e-5)


def test_inspect_marks_what_is_trained(sft_tokenizer, translations):
    template = get_template("baichuan2", sft_tokenizer)
    ((conversation, sample),) = encode_fitting(
        template, translations[:1], 256, mask_history=False, stats=SFTDataStats()
    )
    shown = render_sample(template, conversation, sample)
    question, answer = (text for _, text in conversation.messages)
    header, text = shown.splitlines()[:2]
    assert header.startswith(f"── {conversation.origin}: {len(sample.input_ids)} tokens")
    assert shown.split("\n\n")[0].endswith(f"{question}<reserved_107>⟦{answer}</s>⟧")
    assert "\ufffd" not in shown  # characters split over byte tokens are shown whole
    table = shown.split("\n\n")[1].splitlines()
    assert table[1].split() == ["0", "195", "-", "'<reserved_106>'"]
    assert table[-1].split()[1:3] == ["2", "2"]  # EOS, trained as itself
