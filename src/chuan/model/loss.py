"""Causal-LM loss over a large vocabulary without materialising `[tokens x vocab]` logits.

Baichuan 2's 125,696-token head makes the fp32 logits of one 4,096-token row 2 GiB, and
autograd would keep that plus its softmax and gradient alive. The reports split the tensor;
we walk the tokens in chunks and compute each chunk's gradient with respect to the hidden
states and the head weight *during the forward pass*, so only `[chunk x vocab]` is ever live
and backward is a scaling of stored gradients (no recomputation). Written here because no
library we depend on offers it for an arbitrary, NormHead-normalised weight.

The max-z loss of the Baichuan 2 report, `weight * z**2` with `z` the largest logit, is
added per position. Its gradient goes to the arg-max logit only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from chuan.errors import InputError

IGNORE_INDEX = -100
DEFAULT_LOGITS_BUDGET = 1 << 26  # elements of one fp32 `[chunk x vocab]` block (256 MiB)


@dataclass
class LMLoss:
    """`loss` (differentiable) = `ce + z_loss`; the other fields are detached, for logging.

    `max_logit` is the largest logit over all positions, the quantity the max-z loss bounds.
    """

    loss: torch.Tensor
    ce: torch.Tensor
    z_loss: torch.Tensor
    max_logit: torch.Tensor


def _chunk_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ce_scale: torch.Tensor,
    z_scale: torch.Tensor,
    with_grad: bool,
):
    """Loss sums of one chunk and, if asked, d(loss)/d(logits) of that chunk in weight dtype.

    Each pass over the `[chunk x vocab]` block costs as much as a small matmul on a CPU, so the
    softmax is built in place from the max that the z-loss needs anyway.
    """
    logits = (hidden @ weight.t()).to(ce_scale.dtype)
    safe_targets = torch.where(targets != IGNORE_INDEX, targets, torch.zeros_like(targets))
    target_logit = logits.gather(-1, safe_targets[:, None]).squeeze(-1)
    z, z_index = logits.max(dim=-1)
    exp = logits.sub_(z[:, None]).exp_()  # the logits are not needed after this
    total = exp.sum(dim=-1)
    lse = z + total.log()
    ce_sum = ((lse - target_logit) * ce_scale).sum()
    z_sum = (z.square() * z_scale).sum()
    if not with_grad:
        return ce_sum, z_sum, z.max(), None
    rows = torch.arange(exp.shape[0], device=exp.device)
    grad = exp.mul_((ce_scale / total)[:, None])  # softmax * scale
    grad[rows, safe_targets] -= ce_scale
    grad[rows, z_index] += 2.0 * z * z_scale
    return ce_sum, z_sum, z.max(), grad.to(weight.dtype)


class _ChunkedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ce_scale, z_scale, chunk_size, with_grad):
        acc = ce_scale.dtype
        ce_total = hidden.new_zeros((), dtype=acc)
        z_total = hidden.new_zeros((), dtype=acc)
        max_logit = hidden.new_full((), -math.inf, dtype=acc)
        grad_hidden = torch.empty_like(hidden) if with_grad else None
        grad_weight = None
        for start in range(0, hidden.shape[0], chunk_size):
            end = start + chunk_size
            chunk = hidden[start:end]
            ce_sum, z_sum, chunk_max, grad = _chunk_terms(
                chunk,
                weight,
                targets[start:end],
                ce_scale[start:end],
                z_scale[start:end],
                with_grad,
            )
            ce_total += ce_sum
            z_total += z_sum
            torch.maximum(max_logit, chunk_max, out=max_logit)
            if with_grad:
                grad_hidden[start:end] = grad @ weight
                grad_t, chunk = grad.t().to(acc), chunk.to(acc)
                if grad_weight is None:  # the first product initialises it: no zero-fill pass
                    grad_weight = grad_t @ chunk
                else:
                    grad_weight.addmm_(grad_t, chunk)
        if with_grad and grad_weight is None:  # no tokens at all
            grad_weight = torch.zeros_like(weight, dtype=acc)
        # Kept on ctx rather than saved tensors so backward can scale them in place: a
        # `[vocab x hidden]` copy is as large as the fp32 logits this function avoids.
        ctx.grads = (grad_hidden, grad_weight.to(weight.dtype)) if with_grad else None
        ctx.mark_non_differentiable(ce_total, z_total, max_logit)
        return ce_total + z_total, ce_total, z_total, max_logit

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_z, _grad_max):
        if ctx.grads is None:
            raise RuntimeError("chunked_lm_loss: backward through this graph ran already")
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        return grad_hidden.mul_(grad_loss), grad_weight.mul_(grad_loss), *(None,) * 5


def chunked_lm_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    z_loss_weight: float = 0.0,
    z_loss_over_all_positions: bool = False,
    reduction: str = "mean",
    chunk_size: int | None = None,
) -> LMLoss:
    """Cross-entropy (+ max-z loss) of `hidden [N, h] @ weight[V, h].T` against `targets [N]`.

    `targets` use -100 for positions without a label. With `reduction="mean"` the CE is the
    mean over labelled positions and the z-loss the mean over labelled positions (or over all
    positions, Baichuan's HF code, with `z_loss_over_all_positions`); `"sum"` leaves both as
    sums so a training loop can normalise by a global token count.
    """
    if reduction not in ("mean", "sum"):
        raise InputError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    # Loss arithmetic in fp32 at least (fp64 inputs stay fp64).
    labelled = (targets != IGNORE_INDEX).to(torch.promote_types(weight.dtype, torch.float32))
    z_positions = torch.ones_like(labelled) if z_loss_over_all_positions else labelled
    if reduction == "mean":
        ce_scale = labelled / labelled.sum().clamp(min=1.0)
        z_scale = z_positions * (z_loss_weight / z_positions.sum().clamp(min=1.0))
    else:
        ce_scale, z_scale = labelled, z_positions * z_loss_weight
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_LOGITS_BUDGET // weight.shape[0])
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    loss, ce, z, max_logit = _ChunkedLMLoss.apply(
        hidden, weight, targets, ce_scale, z_scale, chunk_size, with_grad
    )
    return LMLoss(loss=loss, ce=ce, z_loss=z, max_logit=max_logit)
