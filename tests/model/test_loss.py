"""Chunked cross-entropy + max-z loss against the plain full-logits computation."""

import pytest
import torch
import torch.nn.functional as F

from chuan.model import BaichuanForCausalLM, chunked_lm_loss, preset_config


def _reference(hidden, weight, targets, z_weight, over_all=False):
    logits = hidden @ weight.t()
    ce = F.cross_entropy(logits, targets, ignore_index=-100)
    z = logits.max(dim=-1).values.square()
    labelled = targets != -100
    z_loss = z.mean() if over_all else z[labelled].mean()
    return ce + z_weight * z_loss


def _inputs(dtype, n=37, hidden=16, vocab=101, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(vocab, hidden, generator=g, dtype=dtype, requires_grad=True)
    t = torch.randint(0, vocab, (n,), generator=g)
    t[::5] = -100
    return h, w, t


@pytest.mark.parametrize("z_weight", [0.0, 2e-4, 0.5])
@pytest.mark.parametrize("over_all", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 8, 1000])
def test_loss_and_gradients_equal_unchunked(z_weight, over_all, chunk_size):
    h, w, t = _inputs(torch.float64)
    ours = chunked_lm_loss(
        h,
        w,
        t,
        z_loss_weight=z_weight,
        z_loss_over_all_positions=over_all,
        chunk_size=chunk_size,
    )
    gh, gw = torch.autograd.grad(ours.loss, (h, w))
    ref = _reference(h, w, t, z_weight, over_all)
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert abs(ours.loss.item() - ref.item()) < 1e-6
    torch.testing.assert_close(gh, rh, atol=1e-6, rtol=0)
    torch.testing.assert_close(gw, rw, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.ce + ours.z_loss, ours.loss.detach())


def test_fp32_matches_within_1e6():
    h, w, t = _inputs(torch.float32, n=64, hidden=32, vocab=257)
    ours = chunked_lm_loss(h, w, t, z_loss_weight=2e-4, chunk_size=10)
    gh, gw = torch.autograd.grad(ours.loss, (h, w))
    ref = _reference(h, w, t, 2e-4)
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert abs(ours.loss.item() - ref.item()) < 1e-5
    torch.testing.assert_close(gh, rh, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw, rw, atol=1e-6, rtol=1e-5)


def test_sum_reduction_and_no_label_rows():
    h, w, t = _inputs(torch.float64)
    mean = chunked_lm_loss(h, w, t).loss
    total = chunked_lm_loss(h, w, t, reduction="sum").loss
    assert total.item() == pytest.approx(mean.item() * (t != -100).sum().item())
    empty = chunked_lm_loss(h, w, torch.full_like(t, -100)).loss
    assert empty.item() == 0.0  # no NaN when a micro-batch has no labels


def test_model_loss_is_shifted_ce_plus_max_z_through_normhead():
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config("tiny", z_loss_weight=2e-4)).double()
    ids = torch.randint(3, 4096, (2, 9))
    labels = ids.clone()
    labels[:, :3] = -100
    loss = model(ids, labels=labels).loss
    loss.backward()
    ours_grad = model.lm_head.weight.grad.clone()
    model.zero_grad()

    hidden = model.model(ids).last_hidden_state
    weight = F.normalize(model.lm_head.weight, dim=-1)
    ref = _reference(hidden[:, :-1].reshape(-1, 128), weight, labels[:, 1:].reshape(-1), 2e-4)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-9)
    torch.testing.assert_close(ours_grad, model.lm_head.weight.grad, atol=1e-9, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = BaichuanForCausalLM(preset_config("tiny")).train()
    ids = torch.randint(3, 4096, (2, 16))
    model(ids, labels=ids).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.activation_checkpointing_enable()
    assert model.model.gradient_checkpointing
    model(ids, labels=ids).loss.backward()
    for a, p in zip(plain, model.parameters(), strict=True):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-5)
