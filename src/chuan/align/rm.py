"""`chuan rm`: reward models, trained on preference pairs and used to score files.

A reward model is the decoder with a one-output `score` head read at the last real token of
prompt + answer (`chuan.model.modeling.BaichuanForSequenceClassification`; left or right
padding give the same score), started from a chat model with a new head. It trains on the
pair engine (`chuan.align.pair_trainer`: both answers of B pairs in one forward, the loss
the mean over the global batch's pairs) with the Bradley–Terry loss
(`chuan.align.losses.bradley_terry_loss`). The held-out numbers are the loss, the mean
scores, and the accuracy (chosen scored above rejected) overall and, where the records give a
margin, by margin, as Baichuan 2's report gives it by human score gap.

The output `OUT/model` loads with `AutoModelForSequenceClassification.from_pretrained` once
chuan is imported; under LoRA the adapter (with the whole score head) is merged into it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from chuan.align.adapters import apply_finetune, write_tokenizer_side
from chuan.align.conversations import read_conversations
from chuan.align.losses import bradley_terry_loss
from chuan.align.pair_data import PairBatch, PairRows, encode_pairs, to_pair_rows
from chuan.align.pair_trainer import PairTrainer
from chuan.align.preferences import read_preferences
from chuan.align.rm_config import RMConfig
from chuan.align.sft import run_fine_tune
from chuan.align.sft_data import SFTDataStats, encode_fitting
from chuan.errors import InputError
from chuan.fileio import write_jsonl
from chuan.model.checkpoint import write_model_dir
from chuan.model.convert import load_reward_model
from chuan.tokenizer.chat_templates import template_for
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.checkpoint import full_model_state, save_model_dir
from chuan.train.data import Batch, padded_batch
from chuan.train.distributed import World
from chuan.train.loop import PretrainResult, eval_mode

MAX_GAPS = 20  # accuracy is reported per margin value when there are at most this many


def reward_scores(model: nn.Module, batch: Batch, autocast: torch.dtype | None) -> torch.Tensor:
    """`[rows]` fp32 scores of a right- or left-padded batch."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return out.logits[:, 0].float()


@torch.no_grad()
def score_pairs(
    model: nn.Module, rows: PairRows, batch_size: int, device, autocast=None, progress=False
) -> np.ndarray:
    """`[pairs, 2]` scores (chosen, rejected) of every pair of `rows`, in row order."""
    scores = np.empty((len(rows), 2))
    starts = range(0, len(rows), batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc="scoring", unit="batch", disable=not progress):
            pb = rows.rows_batch(list(range(start, min(start + batch_size, len(rows)))))
            got = reward_scores(model, pb.batch.to(device), autocast).double().cpu().numpy()
            scores[start : start + pb.num_pairs] = got.reshape(2, -1).T
    return scores


def accuracy_by_gap(scores: np.ndarray, margins: np.ndarray) -> dict[float, tuple[float, int]]:
    """Accuracy and pair count per distinct margin (none when margins are missing or more
    than `MAX_GAPS` distinct values)."""
    known = ~np.isnan(margins)
    gaps = np.unique(margins[known])
    if not known.any() or len(gaps) > MAX_GAPS:
        return {}
    right = scores[:, 0] > scores[:, 1]
    return {float(g): (float(right[margins == g].mean()), int((margins == g).sum())) for g in gaps}


class RewardTrainer(PairTrainer):
    verb = "rm"
    title = "Reward model run"

    def __init__(self, cfg: RMConfig, world):
        self.by_gap: dict[float, tuple[float, int]] = {}
        super().__init__(cfg, world)

    def build_model(self) -> nn.Module:
        return apply_finetune(load_reward_model(self.cfg.model), self.cfg)

    def _losses(self, chosen, rejected, margin) -> torch.Tensor:
        cfg = self.cfg
        margin = torch.nan_to_num(margin.to(chosen), nan=0.0) if cfg.margin else None
        return bradley_terry_loss(chosen, rejected, margin=margin, center=cfg.center_rewards)

    def pair_losses(
        self, model: nn.Module, pb: PairBatch, rows: PairRows
    ) -> tuple[torch.Tensor, dict]:
        n = pb.num_pairs
        scores = reward_scores(model, pb.batch, self.autocast)
        chosen, rejected = scores[:n], scores[n:]
        c, r = chosen.detach().double(), rejected.detach().double()
        numbers = {
            "reward_chosen": c.sum(),
            "reward_rejected": r.sum(),
            "reward_margin": (c - r).sum(),
            "reward_accuracy": (c > r).double().sum(),
            "max_logit": scores.detach().abs().max().item(),
        }
        return self._losses(chosen, rejected, pb.margin), numbers

    @torch.no_grad()
    def held_out(self) -> dict[str, float]:
        """Loss, mean scores and accuracy of the held-out pairs (every rank scores them
        all), and the accuracy by margin for the report."""
        rows = self.eval_rows
        scores = score_pairs(
            self.model, rows, self.cfg.micro_batch_size, self.world.device, self.autocast
        )
        if hasattr(self.model, "reshard"):
            self.model.reshard()
        margins = np.asarray(rows.data["margin"], dtype=np.float64)
        self.by_gap = accuracy_by_gap(scores, margins)
        c, r = torch.from_numpy(scores).T
        losses = self._losses(c, r, torch.from_numpy(margins))
        return {
            "eval_loss": losses.mean().item(),
            "eval_reward_chosen": c.mean().item(),
            "eval_reward_rejected": r.mean().item(),
            "eval_reward_margin": (c - r).mean().item(),
            "eval_reward_accuracy": (c > r).double().mean().item(),
        }

    def finish(self) -> Path:
        """`OUT/model`: the reward model, the LoRA adapter merged in (`OUT/adapter` keeps
        it apart)."""
        cfg, out = self.cfg, self.run_dir / "model"
        if cfg.finetune != "lora":
            self.write_model(out)
            return out
        self.write_model(self.run_dir / "adapter")
        write_reward_model(self.model, cfg.model, cfg, out, self.world, cfg.model)
        return out

    def report_extras(self) -> tuple[dict, list[str]]:
        extra, lines = super().report_extras()
        cfg = self.cfg
        extra |= {
            "margin": cfg.margin,
            "center_rewards": cfg.center_rewards,
            "held_out_first": self.first_held_out,
            "held_out_last": self.last_held_out,
            "accuracy_by_margin": {
                f"{g:g}": {"accuracy": a, "pairs": n} for g, (a, n) in self.by_gap.items()
            },
        }
        head = [
            "",
            "## Reward model: Bradley–Terry loss"
            + (", record margins" if cfg.margin else "")
            + (f", reward centring {cfg.center_rewards:g}" if cfg.center_rewards else ""),
            "",
        ]
        if self.first_held_out and self.last_held_out:
            first, last = self.first_held_out, self.last_held_out
            head.append(
                f"- held-out accuracy {first['eval_reward_accuracy']:.1%} → "
                f"{last['eval_reward_accuracy']:.1%}; mean score gap "
                f"{first['eval_reward_margin']:.4f} → {last['eval_reward_margin']:.4f}"
            )
        if self.by_gap:
            head += ["", "| margin | accuracy | pairs |", "|---:|---:|---:|"]
            head += [f"| {g:g} | {a:.1%} | {n} |" for g, (a, n) in self.by_gap.items()]
        return extra, head + lines


def rm(cfg: RMConfig, *, resume: str | None = None) -> PretrainResult:
    """Train (or, with `resume`, continue training) a reward model."""
    return run_fine_tune(RewardTrainer, cfg, resume)


def score_file(
    model_dir: str | Path,
    path: str | Path,
    out: str | Path,
    *,
    format: str | None = None,
    batch_size: int = 8,
    max_length: int = 2048,
    overwrite: bool = False,
) -> dict:
    """Score every record of a preference file (both answers) or of a chat data file (its
    last answer) with a reward model; one JSON line per scored record in `out`, the rejected
    records in `OUT.rejects.jsonl`, and the summary returned (for pairs, the accuracy)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it")
    model = load_reward_model(model_dir, require_head=True).eval()
    template = template_for(load_tokenizer(model_dir))
    stats = SFTDataStats()
    try:
        pairs, rejects = read_preferences(path, format)
    except InputError as error:
        if format is not None or "preference data format" not in str(error):
            raise
        conversations, rejects = read_conversations(path)
        kind = "conversations"
        encoded = encode_fitting(
            template, conversations, max_length, mask_history=True, stats=stats
        )
        records = _score_conversations(model, encoded, batch_size)
    else:
        kind = "pairs"
        encoded = encode_pairs(template, pairs, max_length, stats)
        rows = to_pair_rows(encoded, shuffle=False, seed=0)
        scores = score_pairs(model, rows, batch_size, torch.device("cpu"), progress=True)
        records = [
            {"origin": p.origin, "chosen": float(s[0]), "rejected": float(s[1])}
            | ({} if p.margin is None else {"margin": p.margin})
            for (p, _, _), s in zip(encoded, scores, strict=True)
        ]
    write_jsonl(out, records)
    rejected = out.with_name(out.name.removesuffix(".jsonl") + ".rejects.jsonl")
    write_jsonl(rejected, [r.as_dict() for r in rejects])
    summary = {
        "kind": kind,
        "scored": len(records),
        "rejected": len(rejects),
        "dropped_too_long": stats.dropped_too_long,
        "truncated": stats.truncated,
        "out": str(out),
    }
    if kind == "pairs" and records:
        summary["accuracy"] = sum(r["chosen"] > r["rejected"] for r in records) / len(records)
        summary["mean_gap"] = sum(r["chosen"] - r["rejected"] for r in records) / len(records)
    elif records:
        summary["mean_score"] = sum(r["score"] for r in records) / len(records)
    return summary


@torch.no_grad()
def _score_conversations(model: nn.Module, encoded: list, batch_size: int) -> list[dict]:
    records = []
    for start in tqdm(range(0, len(encoded), batch_size), desc="scoring", unit="batch"):
        chunk = encoded[start : start + batch_size]
        batch = padded_batch([s.input_ids for _, s in chunk], [s.labels for _, s in chunk])
        scores = reward_scores(model, batch, None)
        records += [
            {"origin": c.origin, "score": float(s)} for (c, _), s in zip(chunk, scores, strict=True)
        ]
    return records


def write_reward_model(
    model: nn.Module, source: str | Path, cfg, out: Path, world: World, tokenizer: str | Path
) -> None:
    """`out` as a reward-model dir (`load_reward_model` and `chuan rm score` read it) of
    `model`, trained from the model dir `source` with `cfg.finetune` full, freeze or LoRA
    (merged into `source`'s weights), with `tokenizer`'s files and `cfg.template`. Every rank
    calls it: the weights are gathered."""
    if cfg.finetune not in ("full", "freeze", "lora"):
        raise InputError(f"finetune: {cfg.finetune} cannot be written as a reward-model dir")
    if cfg.finetune != "lora":
        save_model_dir(model, out, world, tokenizer)
        if world.is_main:
            write_tokenizer_side(tokenizer, out, cfg.template)
        return
    state = full_model_state(model)  # every rank takes part in the gather
    if world.is_main:
        merged = apply_finetune(load_reward_model(source), cfg)
        merged.load_state_dict(state)
        merged = merged.merge_and_unload()
        write_model_dir(out, merged.config, merged.state_dict(), overwrite=True)
        write_tokenizer_side(tokenizer, out, cfg.template)
