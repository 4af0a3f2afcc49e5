"""The peft methods beyond LoRA that `chuan sft` trains: AdaLoRA, prefix tuning, P-Tuning v2,
prompt tuning and P-Tuning, each built from its key of the recipe with peft's defaults.

chuan's part is what peft cannot know about a Baichuan model and chuan's loop:

- the virtual-token methods' prefix is shared by every packed conversation of a row
  (`chuan.infer.virtual_tokens.share_virtual_tokens`), so packing stays on;
- AdaLoRA needs the run's length (`total_step`), a rank reallocation after every update
  (`AdaLoraSchedule.after_update`), and its orthogonal regulariser at its own weight: peft
  adds it to the loss the model returns, which in chuan's loop is a sum over a micro-batch's
  tokens, so peft's term is switched off and chuan adds it once per step
  (`AdaLoraSchedule.penalty`).
"""

from __future__ import annotations

import torch
from torch import nn

from chuan.align.sft_config import SFTConfig
from chuan.errors import InputError

# peft's own orthogonal-regulariser weight: negligible (1e-30 times a term of order 1, added
# to a loss summed over a micro-batch's tokens), as peft < 0.19 rejects 0.
PEFT_ORTH_REG_OFF = 1e-30


def peft_config_for(model: nn.Module, cfg: SFTConfig, total_steps: int):
    """peft's config for `cfg.finetune` (adalora, prefix, ptuning_v2, prompt, ptuning)."""
    import peft

    method = cfg.finetune
    if method == "adalora":
        return _adalora_config(model, cfg, total_steps)
    if method in ("prefix", "ptuning_v2"):
        # P-Tuning v2 (Liu et al. 2022) is deep prompt tuning: a prefix at every layer
        # without Li & Liang's MLP reparameterisation.
        return peft.PrefixTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.prefix.num_virtual_tokens,
            prefix_projection=cfg.prefix.projection and method == "prefix",
        )
    if method == "prompt":
        text = cfg.prompt.init_text
        return peft.PromptTuningConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.prompt.num_virtual_tokens,
            prompt_tuning_init="TEXT" if text else "RANDOM",
            prompt_tuning_init_text=text,
            tokenizer_name_or_path=cfg.model if text else None,
        )
    if method == "ptuning":
        return peft.PromptEncoderConfig(
            task_type="CAUSAL_LM",
            num_virtual_tokens=cfg.ptuning.num_virtual_tokens,
            encoder_reparameterization_type=cfg.ptuning.encoder.upper(),
            encoder_hidden_size=cfg.ptuning.hidden,
        )
    raise ValueError(f"not a peft method of this module: {method}")


def _adalora_config(model: nn.Module, cfg: SFTConfig, total_steps: int):
    import peft

    ada = cfg.adalora
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = sorted(set(ada.targets) - names)
    if missing:
        raise InputError(
            f"adalora.targets {missing} name no module of this model; Baichuan's linear "
            "layers are W_pack, o_proj, gate_proj, up_proj, down_proj"
        )
    if ada.tinit >= total_steps - ada.tfinal:
        raise InputError(
            f"adalora: tinit {ada.tinit} + tfinal {ada.tfinal} leave no step of the run's "
            f"{total_steps} to reallocate ranks in; lower them or train longer"
        )
    return peft.AdaLoraConfig(
        task_type="CAUSAL_LM",
        init_r=ada.init_r,
        target_r=ada.target_r,
        tinit=ada.tinit,
        tfinal=ada.tfinal,
        deltaT=ada.deltaT,
        total_step=total_steps,
        target_modules=list(ada.targets),
        # chuan adds the regulariser itself (`AdaLoraSchedule.penalty`). peft 0.18 refuses a
        # weight of 0, so peft's own term gets one that adds nothing next to a token loss.
        orth_reg_weight=PEFT_ORTH_REG_OFF,
    )


def orthogonality(model: nn.Module) -> torch.Tensor:
    """AdaLoRA's regulariser R(P, Q) = ||PᵀP - I||_F + ||QQᵀ - I||_F (Zhang et al. 2023,
    arXiv:2303.10512, eq. 4), which keeps the left and right singular vectors of each
    `P Λ Q` update orthonormal, averaged over the matrices as peft does."""
    terms = []
    for name, param in model.named_parameters():
        if not param.requires_grad or not ("lora_A" in name or "lora_B" in name):
            continue
        gram = param @ param.T if "lora_A" in name else param.T @ param
        eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
        terms.append(torch.linalg.matrix_norm(gram - eye))
    return torch.stack(terms).mean()


class AdaLoraSchedule:
    """AdaLoRA's part of the loop for a peft AdaLoRA `model` (not wrapped by DDP)."""

    def __init__(self, model: nn.Module, weight: float):
        self.model = model
        self.weight = weight

    def penalty(self) -> torch.Tensor:
        """The orthogonal regulariser at its weight, added once per optimizer step."""
        return self.weight * orthogonality(self.model)

    def after_update(self, step: int) -> None:
        """peft's budget step: importance from the gradients just used, ranks masked to the
        step's budget (after `tfinal`, the final pattern, recorded in the adapter config)."""
        self.model.base_model.update_and_allocate(step)
