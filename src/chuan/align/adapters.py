"""What trains in a fine-tune (`full`, `freeze`, `lora`, `qlora`, and the peft methods of
`peft_methods`), NEFTune, and peft adapters saved, loaded and merged.

LoRA targets Baichuan's fused `W_pack` by default, as baichuan-inc/Baichuan2
`fine-tune/fine-tune.py` does (one A of r x h and one B of 3h x r shared by q, k and v);
`all-linear` adapts every linear layer of the blocks. NormHead is not an `nn.Linear`, so
peft never wraps the head (MedicalGPT#229 is the error a Linear-only tool hits there).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from chuan.align.peft_methods import peft_config_for
from chuan.align.sft_config import SFTConfig
from chuan.errors import DependencyError, InputError
from chuan.fileio import write_atomic
from chuan.infer.loading import is_prompt_learning, load_model, quiet_peft
from chuan.infer.virtual_tokens import share_virtual_tokens
from chuan.model.checkpoint import copy_side_files, read_config_dict, write_model_dir
from chuan.model.convert import load_as_baichuan
from chuan.model.modeling import BaichuanForSequenceClassification
from chuan.tokenizer.chat_templates import get_template, record_template
from chuan.tokenizer.hf import load_tokenizer
from chuan.train.loop import eval_mode

ADAPTER_CONFIG = "adapter_config.json"


def check_qlora(device: torch.device) -> None:
    """Refuse `qlora` where bitsandbytes' 4-bit kernels cannot run, before any data is read."""
    if device.type != "cuda":
        raise InputError(
            "finetune: qlora quantizes the base model with bitsandbytes, which needs a CUDA "
            "GPU; on this machine use finetune=lora (the same adapter over an fp32 base)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise DependencyError("finetune: qlora needs bitsandbytes: pip install bitsandbytes") from e


def load_base(cfg: SFTConfig, device: torch.device) -> nn.Module:
    """The model to fine-tune: fp32 (the trainer autocasts), or 4-bit NF4 for `qlora`."""
    if cfg.finetune != "qlora":
        return load_as_baichuan(cfg.model, dtype=torch.float32)
    check_qlora(device)
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig

    from chuan.model.modeling import BaichuanForCausalLM

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    model = BaichuanForCausalLM.from_pretrained(
        cfg.model, quantization_config=quant, dtype=torch.bfloat16, device_map={"": device}
    )
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def apply_finetune(model: nn.Module, cfg: SFTConfig, total_steps: int = 0) -> nn.Module:
    """`model` with only what `cfg.finetune` trains left trainable (the peft methods: wrapped
    by peft). `total_steps`, the run's optimizer steps, sets AdaLoRA's rank schedule."""
    if cfg.finetune == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    if cfg.finetune == "freeze":
        return _train_last_blocks(model, cfg.freeze.trainable_layers)
    if cfg.finetune in ("lora", "qlora"):
        return _with_lora(model, cfg)
    from peft import get_peft_model

    with quiet_peft():
        wrapped = get_peft_model(model, peft_config_for(model, cfg, total_steps))
    share_virtual_tokens(wrapped)
    return wrapped


def _train_last_blocks(model: nn.Module, count: int) -> nn.Module:
    layers = model.model.layers
    if count > len(layers):
        raise InputError(f"freeze.trainable_layers={count} but the model has {len(layers)} blocks")
    for param in model.parameters():
        param.requires_grad_(False)
    for module in [*layers[len(layers) - count :], model.model.norm]:
        for param in module.parameters():
            param.requires_grad_(True)
    return model


def _with_lora(model: nn.Module, cfg: SFTConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    targets = "all-linear" if lora.targets == ["all-linear"] else list(lora.targets)
    if targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()}
        missing = sorted(set(targets) - names)
        if missing:
            raise InputError(
                f"lora.targets {missing} name no module of this model; Baichuan's linear "
                "layers are W_pack, o_proj, gate_proj, up_proj, down_proj (or all-linear)"
            )
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        # a reward model's new `score` head trains whole (peft's SEQ_CLS saves it beside
        # the adapter)
        task_type="SEQ_CLS"
        if isinstance(model, BaichuanForSequenceClassification)
        else "CAUSAL_LM",
    )
    with quiet_peft():
        return get_peft_model(model, config)


def add_neftune(model: nn.Module, alpha: float) -> None:
    """NEFTune (Jain et al. 2023, arXiv:2310.05914): uniform noise of scale alpha / sqrt(L d)
    on the input embeddings while training (L the row length, d the width); off in eval."""

    def noisy(module: nn.Module, args, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        scale = alpha / math.sqrt(output.size(-2) * output.size(-1))
        return output + torch.empty_like(output).uniform_(-scale, scale)

    model.get_input_embeddings().register_forward_hook(noisy)


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def save_adapter(model: nn.Module, state: dict[str, torch.Tensor], out: Path) -> None:
    """A peft adapter dir (`PeftModel.from_pretrained` loads it) from a full state dict
    (gathered from every rank), written to `out` as it is."""
    # The vocabulary never changes in a fine-tune: no embedding rows to save (and no lookup
    # of the base's config on the hub, which peft would otherwise try).
    model.save_pretrained(
        str(out), state_dict=state, safe_serialization=True, save_embedding_layers=False
    )


def write_tokenizer_side(src: str | Path, out: Path, template_name: str) -> None:
    """The base's tokenizer files and generation config, with the chat template recorded
    and the template's stop ids (e.g. ChatML's end marker) as the generation EOS ids."""
    copy_side_files(src, out)
    template = get_template(template_name, load_tokenizer(src))
    record_template(out, template)
    path = out / "generation_config.json"
    config = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    config["eos_token_id"] = (
        template.stop_ids if len(template.stop_ids) > 1 else template.stop_ids[0]
    )
    write_atomic(path, json.dumps(config, indent=2) + "\n")


def merge_adapter(
    base: str | Path, adapter: str | Path, out: str | Path, *, overwrite: bool = False
) -> Path:
    """Fold a LoRA or AdaLoRA adapter into its base: a plain model dir with
    `W += scale · B A` (AdaLoRA: `B (A ⊙ E)`, its pruned ranks zero).

    Tokenizer files come from the adapter dir when it has them (chuan writes the chat
    template there), else from the base. A prompt-learning adapter is refused: its virtual
    tokens are inputs, not a change of weights.
    """
    read_config_dict(base)  # a clear error for a missing base
    if is_prompt_learning(adapter):
        raise InputError(
            f"{adapter} is a prompt-learning adapter (prefix, prompt or P-tuning): it puts "
            "virtual tokens before every input and changes no weight, so there is nothing to "
            f"merge. Use it unmerged: chuan chat {base} --adapter {adapter} (also chuan "
            "generate and chuan serve)"
        )
    model = load_model(base, device="cpu", dtype="fp32", adapter=adapter)
    side = adapter if (Path(adapter) / "tokenizer_config.json").is_file() else base
    write_model_dir(
        out, model.config, model.state_dict(), side_files_from=side, overwrite=overwrite
    )
    return Path(out)


@contextlib.contextmanager
def reference_model(model: nn.Module, frozen: nn.Module | None):
    """The reference a policy is compared with: the `frozen` copy, or, when there is none,
    `model` (unwrapped from DDP) with its LoRA adapter switched off, in eval mode: the base,
    with no second copy in memory."""
    if frozen is not None:
        yield frozen
        return
    base = getattr(model, "module", model)
    with base.disable_adapter(), eval_mode(base):
        yield base
