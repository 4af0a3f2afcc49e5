"""Training checkpoints: a loadable model dir plus everything needed to continue bit for bit.

Layout of `RUN/checkpoints/step-00001000/`:

    model/              a complete model dir (config, safetensors, tokenizer files)
    train_state/        model + optimizer state through torch.distributed.checkpoint (sharded
                        per rank, re-shardable to another world size on load)
    rng-rank{R}.json    each rank's torch / python / numpy RNG states
    trainer_state.json  step, stage, data position, counters, the scheduler state; written
                        last, so a dir without it was never finished

Checkpoints are written under a temporary name and renamed, so a run killed while saving
leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)

from chuan.fileio import write_atomic
from chuan.model.checkpoint import copy_side_files, write_model_dir
from chuan.train.distributed import World, barrier

_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where a run stands; `samples` is the data position within the current stage."""

    step: int = 0
    stage: int = 0
    stage_step: int = 0
    samples: int = 0
    tokens: int = 0
    skipped_steps: int = 0
    world_size: int = 1
    scheduler: dict = field(default_factory=dict)


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (those with `trainer_state.json`), oldest first."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = _STEP_DIR.match(path.name)
        if match and (path / "trainer_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded fp32 state dict on the CPU (gathered from every rank under FSDP)."""
    return get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def save_model_dir(
    model: nn.Module, out: Path, world: World, tokenizer_dir: str | Path | None
) -> None:
    """All ranks gather; the main rank writes a model dir with the tokenizer files beside it."""
    state = full_model_state(model)
    if world.is_main:
        write_model_dir(out, _unwrap(model).config, state, overwrite=True)
        if tokenizer_dir is not None:
            copy_side_files(tokenizer_dir, out)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _rng_state() -> dict:
    """RNG states as JSON (no pickle to load back, unlike `torch.save` of numpy state)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state().tolist(),
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(
    run_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: TrainerState,
    world: World,
    *,
    write_model: Callable[[Path], None],
    keep: int,
    trainable_only: bool = False,
    extras: dict[str, tuple[nn.Module, torch.optim.Optimizer]] | None = None,
) -> Path:
    """Write `step-N` atomically on every rank, then prune to the newest `keep` on rank 0.

    `write_model(dir)` writes the loadable `model/` (every rank calls it: it may gather).
    With `trainable_only` the training state holds only the parameters that train (an
    adapter, or the unfrozen blocks): the rest is the base model, read again on resume.
    `extras` are more trained models with their optimizers (PPO's critic), saved by name
    beside the model, under the same rules.
    """
    root = checkpoint_root(run_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".step-{state.step:08d}.tmp"
    if world.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    states = {}
    for name, (module, module_optimizer) in {"model": (model, optimizer), **(extras or {})}.items():
        module_state, optim_state = get_state_dict(module, module_optimizer)
        if trainable_only:
            module_state = _trainable_part(module, module_state)
        states[name] = module_state
        states[_optim_key(name)] = optim_state
    with warnings.catch_warnings():  # one process is a supported DCP mode, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save(states, checkpoint_id=str(tmp / "train_state"))
    write_atomic(tmp / f"rng-rank{world.rank}.json", json.dumps(_rng_state()))
    write_model(tmp / "model")
    barrier(world)
    if world.is_main:
        write_atomic(tmp / "trainer_state.json", json.dumps(asdict(state), indent=2))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier(world)
    return final


def _optim_key(name: str) -> str:
    return "optim" if name == "model" else f"{name}_optim"


def _trainable_part(model: nn.Module, state: dict) -> dict:
    names = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def read_trainer_state(checkpoint: str | Path) -> TrainerState:
    with open(Path(checkpoint) / "trainer_state.json", encoding="utf-8") as f:
        return TrainerState(**json.load(f))


def _dcp_load(state: dict, path: str) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=path)


def load_checkpoint(
    checkpoint: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    world: World,
    *,
    trainable_only: bool = False,
    extras: dict[str, tuple[nn.Module, torch.optim.Optimizer | None]] | None = None,
) -> None:
    """Model, optimizer and this rank's RNG states, re-sharded to the current world.

    Without an optimizer only the weights are read: a new stage starts a fresh optimizer.
    `trainable_only` reads a checkpoint saved with it into a model that already holds the
    base weights. `extras` are read back as `save_checkpoint` wrote them.
    """
    train_state = str(Path(checkpoint) / "train_state")
    options = StateDictOptions(strict=not trainable_only)
    modules = {"model": (model, optimizer), **(extras or {})}
    state = {}
    for name, (module, module_optimizer) in modules.items():
        if module_optimizer is None:
            module_state = get_model_state_dict(module)
        else:
            module_state, state[_optim_key(name)] = get_state_dict(module, module_optimizer)
        state[name] = _trainable_part(module, module_state) if trainable_only else module_state
    _dcp_load(state, train_state)
    for name, (module, module_optimizer) in modules.items():
        if module_optimizer is None:
            set_model_state_dict(module, state[name], options=options)
        else:
            set_state_dict(
                module,
                module_optimizer,
                model_state_dict=state[name],
                optim_state_dict=state[_optim_key(name)],
                options=options,
            )
    rng_file = Path(checkpoint) / f"rng-rank{world.rank}.json"
    if rng_file.is_file():  # absent when resuming on more ranks than saved
        _set_rng_state(json.loads(rng_file.read_text(encoding="utf-8")))
