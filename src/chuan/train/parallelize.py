"""The model made ready to train, the way torchtitan's `parallelize.py` does it: the model
knows nothing of parallelism; this step applies activation checkpointing, then
`torch.compile` per decoder layer, then FSDP2 sharding, and the trainer receives the result.
DDP is the one wrapper applied per stage (`wrap_ddp`): its reducer records which parameters
train, and a stage may freeze some."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

from chuan.train.config import PretrainConfig
from chuan.train.distributed import World


def parallelize(model: nn.Module, cfg: PretrainConfig, world: World) -> nn.Module:
    """`model` (on its device) with `cfg`'s activation checkpointing, compilation and, when
    the strategy is FSDP, sharding applied in place; returned for chaining."""
    if cfg.activation_checkpointing:
        model.activation_checkpointing_enable({"use_reentrant": False})
    if cfg.compile:
        for layer in decoder_layers(model):
            layer.compile()
    if strategy_for(cfg.distributed.strategy, world) == "fsdp":
        shard_fsdp(model, world)
    return model


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a chuan model, or of the one inside a peft adapter wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model.layers


def strategy_for(requested: str, world: World) -> str:
    """`auto` = `none` in one process and `fsdp` under torchrun."""
    if requested == "auto":
        return "fsdp" if world.distributed else "none"
    if requested != "none" and not world.distributed:
        return "none"  # DDP/FSDP over one rank is the plain model with extra hooks
    return requested


def shard_fsdp(model: nn.Module, world: World) -> nn.Module:
    """FSDP2 in place: each decoder layer is one unit, the root holds embeddings, norm, head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


@contextlib.contextmanager
def unsharded(model: nn.Module) -> Iterator[nn.Module]:
    """`model` with whole parameters on every rank for the block, resharded after it.

    A sharded forward all-gathers, so every rank must run the same number of forwards; a
    block whose count differs between ranks (sampling, where each rank stops when its own
    rows end) runs on gathered weights instead, as DeepSpeed-Chat's hybrid engine does for
    PPO rollouts. Entering is one collective on every rank; a model without FSDP units
    passes through unchanged.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # as `shard_fsdp` left them: layers reshard after forward, the root keeps its own
            unit.set_reshard_after_forward(unit is not model, recurse=False)


def wrap_ddp(model: nn.Module, world: World) -> nn.Module:
    """DDP over the currently trainable parameters (re-wrap after changing `requires_grad`)."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
