"""`chuan sft`: supervised fine-tuning on the pretraining engine.

The run is the pretraining `Trainer` (same loop, token-mean loss over the global batch,
checkpoints with bit-exact resume, FSDP2 / DDP, metrics, TensorBoard, report) with its data
and model hooks replaced: rows are chat conversations encoded by the chat template and packed
with segment ids (`sft_data`), and the model is the base with what `finetune` trains
(`adapters`). Outputs:

    OUT/model/     a complete model dir, the chat template in its tokenizer files
                   (for LoRA and AdaLoRA the adapter merged into the base; none for the
                   prompt-learning methods, whose virtual tokens cannot be merged)
    OUT/adapter/   for the peft methods: the adapter (`PeftModel.from_pretrained` loads it)
    OUT/metrics.jsonl, report.md / report.json (loss curve, masking, replies before / after)
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from chuan.align.adapters import (
    add_neftune,
    apply_finetune,
    check_qlora,
    load_base,
    merge_adapter,
    save_adapter,
    write_tokenizer_side,
)
from chuan.align.conversations import Conversation
from chuan.align.peft_methods import AdaLoraSchedule
from chuan.align.sft_config import ADAPTER_METHODS, PROMPT_LEARNING_METHODS, SFTConfig
from chuan.align.sft_data import (
    SFTDataStats,
    encode_fitting,
    mix,
    read_source,
    render_sample,
    to_rows,
)
from chuan.errors import InputError
from chuan.fileio import write_jsonl
from chuan.infer.generate import generate
from chuan.infer.loading import load_model
from chuan.infer.sampling import SamplingConfig
from chuan.model.checkpoint import read_config_dict
from chuan.tokenizer.chat_templates import ChatTemplate, get_template
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.checkpoint import full_model_state, save_model_dir
from chuan.train.data import PackedRows
from chuan.train.distributed import close_world, init_world
from chuan.train.loop import (
    PretrainResult,
    StagePlan,
    Trainer,
    global_batch,
    stage_plan,
    train_step,
)


@dataclass
class Reply:
    prompt: str
    reference: str
    before: str = ""
    after: str = ""
    before_ended: bool = False  # stopped at EOS (or the template's end marker)
    after_ended: bool = False


def _samples_of(conversations: list[Conversation]) -> list[Reply]:
    return [
        Reply(
            prompt=c.messages[-2][1] if len(c.messages) >= 2 else "",
            reference=c.messages[-1][1],
        )
        for c in conversations
    ]


def _prompt_ids(template: ChatTemplate, conversation: Conversation) -> list[int]:
    messages = [{"role": "system", "content": conversation.system}] if conversation.system else []
    messages += [{"role": r, "content": t} for r, t in conversation.messages[:-1]]
    return template.prompt_ids(messages)


def reply_to(
    model: nn.Module,
    template: ChatTemplate,
    conversations: list[Conversation],
    max_new_tokens: int,
) -> list[tuple[str, bool]]:
    """Greedy replies (text, ended at a stop token) to each conversation's last question."""
    cfg = SamplingConfig(max_new_tokens=max_new_tokens, stop_token_ids=tuple(template.stop_ids))
    prompts = [_prompt_ids(template, c) for c in conversations]
    outputs = generate(model, prompts, cfg)
    tokenizer = template.tokenizer
    return [
        (tokenizer.decode(out, skip_special_tokens=True), len(out) < max_new_tokens)
        for out in outputs
    ]


class SFTTrainer(Trainer):
    verb = "sft"
    title = "Fine-tuning run"
    records, samples = "conversations", "samples"  # what the report counts

    def __init__(self, cfg: SFTConfig, world):
        if cfg.finetune == "qlora":
            check_qlora(world.device)
        self.tokenizer = load_tokenizer(cfg.model)
        self.template = get_template(cfg.template, self.tokenizer)
        self.stats = SFTDataStats()
        self.eval_stats = SFTDataStats()
        self.replies: list[Reply] = []
        self.sample_conversations: list[Conversation] = []
        self.adalora: AdaLoraSchedule | None = None
        super().__init__(cfg, world)
        self.trainable_only_checkpoints = cfg.finetune != "full"
        self.trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    # -- hooks -------------------------------------------------------------------------------

    def tokenizer_source(self) -> str:
        return self.cfg.model

    def build_data(self) -> tuple[list[StagePlan], PackedRows | None]:
        cfg = self.cfg
        held_out: list[Conversation] = []
        plans = []
        for index, stage in enumerate(cfg.stages):
            loaded = [read_source(source, self.stats) for source in stage.data]
            if index == 0 and cfg.eval.holdout:
                held_out, loaded[0] = split_holdout(loaded[0], cfg.eval.holdout, cfg.seed)
            conversations = mix(stage.data, loaded, seed=cfg.seed + index)
            for c in conversations:
                self.stats.mixed[c.origin.rsplit(":", 1)[0]] += 1
            encoded, rows = self._rows(conversations, self.stats, stage.shuffle, cfg.seed + index)
            steps = stage.steps or max(
                1, int(stage.epochs * len(rows)) // global_batch(cfg, self.world)
            )
            plans.append(stage_plan(cfg, index, stage, rows, steps))
            if index == 0:
                self.first_encoded = encoded
        if cfg.eval.data:
            held_out = [c for s in cfg.eval.data for c in read_source(s, self.eval_stats)]
        self.sample_conversations = (held_out or [c for c, _ in self.first_encoded])[
            : cfg.samples.prompts
        ]
        self._write_rejects()
        eval_rows = self._rows(held_out, self.eval_stats, False, 0)[1] if held_out else None
        return plans, eval_rows

    def _rows(
        self, conversations: list[Conversation], stats: SFTDataStats, shuffle: bool, seed: int
    ) -> tuple[list, PackedRows]:
        """Conversations encoded (cut to fit) and put into rows, counted in `stats`."""
        cfg = self.cfg
        encoded = encode_fitting(
            self.template, conversations, cfg.max_length, mask_history=cfg.mask_history, stats=stats
        )
        rows = to_rows(
            [e for _, e in encoded],
            cfg.max_length,
            packing=cfg.packing,
            shuffle=shuffle,
            seed=seed,
            stats=stats,
        )
        return encoded, rows

    def _write_rejects(self) -> None:
        """Every rejected record with its file, line and reason, in `OUT/rejects.jsonl`."""
        if not self.world.is_main:
            return
        write_jsonl(self.run_dir / "rejects.jsonl", [r.as_dict() for r in self.stats.rejects])

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        if cfg.finetune == "qlora" and self.world.size > 1:
            raise InputError("finetune: qlora runs in one process; use lora under torchrun")
        if cfg.finetune == "adalora" and self.strategy == "fsdp":
            raise InputError(
                "finetune: adalora reallocates ranks from whole gradients, which FSDP2 shards; "
                "run it with distributed.strategy=ddp"
            )
        self._replies_before()
        total_steps = sum(plan.steps for plan in self.plans)
        model = apply_finetune(load_base(cfg, self.world.device), cfg, total_steps)
        if cfg.finetune == "adalora":
            self.adalora = AdaLoraSchedule(model, cfg.adalora.orth_reg_weight)
        if cfg.neftune_alpha > 0:
            add_neftune(model, cfg.neftune_alpha)
        return model

    def train_step(self, model: nn.Module, batches: list) -> dict[str, float]:
        penalty = self.adalora.penalty if self.adalora else None
        return train_step(model, batches, self.world, self.autocast, penalty)

    def after_update(self, step: int) -> None:
        if self.adalora:
            self.adalora.after_update(step)

    def prepare_stage(self, plan: StagePlan) -> None:
        """What trains was set once by `finetune`; every stage keeps it."""

    def write_model(self, out: Path) -> None:
        if self.cfg.finetune in ADAPTER_METHODS:
            state = full_model_state(self.model)  # every rank takes part in the gather
            if self.world.is_main:
                out.mkdir(parents=True, exist_ok=True)
                save_adapter(self.model, state, out)
                write_tokenizer_side(self.cfg.model, out, self.cfg.template)
            return
        save_model_dir(self.model, out, self.world, self.cfg.model)
        if self.world.is_main:
            write_tokenizer_side(self.cfg.model, out, self.cfg.template)

    def finish(self) -> Path:
        """OUT/model, or for a prompt-learning method (nothing to merge) OUT/adapter."""
        out = self.run_dir / "model"
        if self.cfg.finetune not in ADAPTER_METHODS:
            self.write_model(out)
            adapter = None
        else:
            adapter = self.run_dir / "adapter"
            self.write_model(adapter)
            if self.cfg.finetune in PROMPT_LEARNING_METHODS:
                out = adapter
            elif self.world.is_main:
                merge_adapter(self.cfg.model, adapter, out, overwrite=True)
        if self.world.is_main:
            self._replies_after(out, adapter if out == adapter else None)
        return out

    def report_extras(self) -> tuple[dict, list[str]]:
        stats = self.stats.as_dict()
        extra = {
            "template": self.template.name,
            "finetune": self.cfg.finetune,
            "trainable_parameters": self.trainable,
            "data": stats,
            "eval_data": self.eval_stats.as_dict() if self.eval_stats.samples else None,
            "replies": [vars(r) for r in self.replies],
        }
        lines = [
            "",
            f"## Data (template {self.template.name}, max_length {self.cfg.max_length}, "
            f"packing {'on' if self.cfg.packing else 'off'})",
            "",
            f"- read: {sum(stats['read'].values()):,} {self.records}; rejected: "
            f"{stats['rejected']:,} (see rejects.jsonl)",
            f"- mixed: {', '.join(f'{k}: {v:,}' for k, v in stats['mixed'].items())}",
            f"- truncated (oldest rounds cut): {stats['truncated']:,}; dropped (last round "
            f"longer than max_length): {stats['dropped_too_long']:,}",
            # RL verbs read prompts only: no rows are built and no token carries a label.
            f"- {stats['samples']:,} {self.samples} in {stats['rows']:,} rows, fill "
            f"{stats['fill']:.1%}; loss on {stats['trained_tokens']:,} of {stats['tokens']:,} "
            f"tokens ({stats['trained_fraction']:.1%}: answers and their end tokens)"
            if stats["rows"]
            else f"- {stats['samples']:,} {self.samples}, {stats['tokens']:,} tokens",
        ]
        if self.replies:
            lines += ["", "## Replies (greedy) before and after", ""]
            for r in self.replies:
                lines += [
                    f"- **prompt**: {one_line(r.prompt)}",
                    f"  - reference: {one_line(r.reference)}",
                    f"  - before: {one_line(r.before)}"
                    + ("" if r.before_ended else " *(no end token)*"),
                    f"  - after: {one_line(r.after)}"
                    + ("" if r.after_ended else " *(no end token)*"),
                ]
        return extra, lines

    # -- replies for the report --------------------------------------------------------------

    def _replies_before(self) -> None:
        if self.world.is_main and self.sample_conversations:
            self.replies = _samples_of(self.sample_conversations)
            replies = self._replies_of(self.cfg.model)
            for reply, (text, ended) in zip(self.replies, replies, strict=True):
                reply.before, reply.before_ended = text, ended

    def _replies_after(self, model_dir: Path, adapter: Path | None) -> None:
        if not self.replies:
            return
        after = self._replies_of(self.cfg.model if adapter else model_dir, adapter)
        for reply, (text, ended) in zip(self.replies, after, strict=True):
            reply.after, reply.after_ended = text, ended

    def _replies_of(
        self, model_dir: str | Path, adapter: Path | None = None
    ) -> list[tuple[str, bool]]:
        """Greedy replies of the model in `model_dir` (with an unmerged `adapter`) to the
        sample prompts, loaded and freed here so that it never sits in memory beside the
        model being trained."""
        if not self.sample_conversations:
            return []
        model = load_model(model_dir, device=str(self.world.device), adapter=adapter)
        replies = reply_to(
            model, self.template, self.sample_conversations, self.cfg.samples.max_new_tokens
        )
        del model
        gc.collect()
        return replies


def one_line(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def split_holdout(
    conversations: list[Conversation], count: int, seed: int
) -> tuple[list[Conversation], list[Conversation]]:
    """(held out, kept): `count` conversations drawn seeded, the rest in their order."""
    if count >= len(conversations):
        raise InputError(
            f"eval.holdout={count} leaves none of the {len(conversations)} conversations of "
            "the first source to train on"
        )
    chosen = set(np.random.default_rng([seed, 1]).permutation(len(conversations))[:count].tolist())
    held = [c for i, c in enumerate(conversations) if i in chosen]
    kept = [c for i, c in enumerate(conversations) if i not in chosen]
    return held, kept


def inspect(cfg: SFTConfig, count: int) -> str:
    """The first `count` samples of the first stage as the model sees them (`--inspect`)."""
    tokenizer = load_tokenizer(cfg.model)
    template = get_template(cfg.template, tokenizer)
    stats = SFTDataStats()
    stage = cfg.stages[0]
    loaded = [read_source(source, stats) for source in stage.data]
    conversations = mix(stage.data, loaded, seed=cfg.seed)[: 2 * count]  # spares for drops
    encoded = encode_fitting(
        template, conversations, cfg.max_length, mask_history=cfg.mask_history, stats=stats
    )[:count]
    return "\n\n".join(render_sample(template, c, e) for c, e in encoded)


def run_fine_tune(trainer: type[SFTTrainer], cfg: SFTConfig, resume: str | None):
    """One run of `trainer` (this module's or a subclass): the world set up and torn down."""
    read_config_dict(cfg.model)  # a missing base fails before anything else
    world = init_world(cfg.device, cfg.distributed.backend)
    try:
        torch.manual_seed(cfg.seed)
        return trainer(cfg, world).run(resume)
    finally:
        close_world(world)


def sft(cfg: SFTConfig, *, resume: str | None = None) -> PretrainResult:
    """Run (or, with `resume="auto"` or a checkpoint path, continue) a fine-tuning run."""
    return run_fine_tune(SFTTrainer, cfg, resume)
