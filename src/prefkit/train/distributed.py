"""Several processes: the ``distributed`` config section and the sharded (FSDP2) layer of the trainer.

``accelerate launch`` starts the processes and sets up the process group, the device and autocast; the
``distributed.strategy`` of the run config says how the processes share the model:

- ``ddp`` (default): every process holds the whole model; ``accelerator.prepare`` wraps the trainer's
  ``PolicyStep`` in ``DistributedDataParallel``.
- ``fsdp``: parameters, gradients and optimizer states are sharded over the processes with FSDP2
  (``torch.distributed.fsdp.fully_shard``): one unit per decoder layer (the classes a transformers model
  names in ``_no_split_modules``) and one root unit, the ``PolicyStep`` itself, which holds what is left
  (embeddings, final norm, output layer). The root must be the module whose ``forward`` runs: the
  log-prob engine calls the decoder and reads ``lm_head.weight`` directly, so only the root's hooks
  gather those weights. A frozen reference model is sharded the same way under its own root
  (:class:`ShardedReference`).
- ``zero2`` / ``zero3`` (DeepSpeed): refused with one line (``docs/distributed.md`` says why).

prefkit calls ``fully_shard`` itself (the call accelerate's ``FullyShardedDataParallelPlugin(fsdp_version=2)``
makes) instead of going through that plugin: accelerate 1.15 ignores the plugin when the processes run on
CPU (its distributed type stays ``MULTI_CPU`` and ``prepare`` returns DDP), so its path could not be
tested on a CPU machine; this one runs the same on CPU (gloo) and GPU (NCCL). For the same reason an
accelerate config that turns on accelerate's own FSDP or DeepSpeed is refused: the run config decides.

Every function here that touches sharded weights is a collective: all processes call it, in the same
order.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from prefkit.errors import ConfigError
from prefkit.models.load import is_peft


@dataclass
class DistributedConfig:
    """How several processes (``accelerate launch``) share the model; one process ignores it."""

    strategy: Literal["ddp", "fsdp", "zero2", "zero3"] = "ddp"
    """``ddp``: a whole replica on every process; ``fsdp``: parameters, gradients and AdamW states sharded
    over the processes (FSDP2, one unit per decoder layer); ``zero2`` / ``zero3`` (DeepSpeed): not
    supported yet (docs/distributed.md)."""
    reshard_after_forward: bool = True
    """``fsdp``: free each layer's gathered weights after its forward and gather them again in backward
    (least memory); false keeps them from forward to backward (less communication, more memory)."""
    cpu_offload: bool = False
    """``fsdp`` on GPUs: keep the sharded parameters, gradients and AdamW states in CPU memory (the optimizer
    step runs on the CPU); for models whose shards do not fit on the GPUs."""


def check_config(strategy: str, mixed_precision: str) -> None:
    """ConfigError (one line) for settings the strategy cannot run, before any model loads."""
    if strategy in ("zero2", "zero3"):
        raise ConfigError(f"distributed.strategy={strategy}: DeepSpeed ZeRO is not supported by prefkit's loop yet "
                          "(docs/distributed.md); use distributed.strategy=fsdp (reshard_after_forward=false is "
                          "ZeRO-2-like, true ZeRO-3-like)")
    if strategy == "fsdp" and mixed_precision == "fp16":
        raise ConfigError("distributed.strategy=fsdp trains in fp32 or bf16 (fp16 would need a sharded gradient "
                          "scaler); set train.mixed_precision=bf16 or no")


# -- the accelerator ----------------------------------------------------------------------------------------


def make_accelerator(mixed_precision: str, cpu: bool) -> Any:
    """A new ``Accelerator``. accelerate keeps one process-wide state and refuses a second Accelerator
    with other settings; in a single, unlaunched process (several Trainers in one script or test
    session) that state is reset first, so each Trainer gets its own precision. Launched runs keep it.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    state = AcceleratorState._shared_state
    if state and int(os.environ.get("WORLD_SIZE", "1")) == 1 and state.get("mixed_precision") != mixed_precision:
        AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
    if accelerator.num_processes > 1:
        atexit.unregister(_destroy_process_group)  # registered once per process, however many Trainers
        atexit.register(_destroy_process_group)
    return accelerator


def _destroy_process_group() -> None:
    """Tear the process group down before the interpreter exits, as PyTorch advises for launched runs
    (otherwise the c10d objects die in interpreter teardown, in no set order). Not done at the end of
    ``train()``: a script may run several Trainers in one launch (the demo runs two). An occasional rank
    abort of the 2-process test under CPU load is not explained by this and not shown fixed by it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_accelerator(accelerator: Any) -> None:
    """Refuse an accelerate config that shards by itself (``--use_fsdp``, ``--use_deepspeed``): one line."""
    kind = str(getattr(accelerator, "distributed_type", "")).rpartition(".")[2]
    if kind in ("FSDP", "DEEPSPEED"):
        raise ConfigError(f"accelerate was launched with its own {kind} (accelerate config); prefkit shards by "
                          "itself: launch with a plain multi-GPU accelerate config and set distributed.strategy "
                          "in the run config (docs/distributed.md)")


def is_sharded(accelerator: Any, strategy: str) -> bool:
    """True when the model is sharded: ``fsdp`` with more than one process."""
    return strategy == "fsdp" and accelerator.num_processes > 1


def check_sharded_run(model: nn.Module, *, evaluators: bool, save_model: bool) -> None:
    """ConfigError (one line) for what a sharded run cannot do: evaluators (they run the whole model on the
    main process) and saving a model whose ``save_pretrained`` cannot take the gathered weights (a
    transformers or PEFT model can, and a prefkit reward model without LoRA)."""
    from transformers import PreTrainedModel

    if evaluators:
        raise ConfigError("eval: evaluators run the whole model on the main process, which "
                          "distributed.strategy=fsdp does not hold; drop the eval: section or use ddp")
    if save_model and not (is_peft(model) or isinstance(model, PreTrainedModel)
                           or getattr(model, "saves_gathered_weights", False)):
        raise ConfigError(f"distributed.strategy=fsdp gathers and saves transformers and PEFT models, not a "
                          f"{type(model).__name__}; set output.save_model=false or use distributed.strategy=ddp")


# -- sharding ----------------------------------------------------------------------------------------------


def layer_modules(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of ``model`` (PEFT-wrapped or inside a reward model): the modules whose class a
    transformers model names in ``_no_split_modules``."""
    names = {n for m in model.modules() for n in (getattr(m, "_no_split_modules", None) or ())}
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"distributed.strategy=fsdp: no decoder layers found in {type(model).__name__} (no "
                          "_no_split_modules); use distributed.strategy=ddp for this model")
    return layers


def shard(root: nn.Module, model: nn.Module, config: DistributedConfig, mixed_precision: str,
          device: torch.device) -> None:
    """``fully_shard`` every decoder layer of ``model``, then ``root`` (a module holding ``model`` whose
    ``forward`` is what runs), in place, over all processes, after giving every process the main
    process's weights (as DDP does; an adapter initialised from an unseeded RNG would differ).

    Mixed precision ``bf16``: weights are gathered and used in bf16, gradients reduced in fp32, and the
    sharded fp32 weights are what AdamW updates (FSDP's ``MixedPrecisionPolicy``).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    if config.cpu_offload and device.type == "cpu":
        raise ConfigError("distributed.cpu_offload moves GPU shards to CPU memory; these processes run on the CPU "
                          "already: set distributed.cpu_offload=false")
    with torch.no_grad():  # as DDP does: every process starts from the main process's weights
        for tensor in (*root.parameters(), *root.buffers()):
            dist.broadcast(tensor, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if mixed_precision == "bf16" else MixedPrecisionPolicy())
    options = {"mesh": mesh, "reshard_after_forward": config.reshard_after_forward, "mp_policy": policy,
               "offload_policy": CPUOffloadPolicy() if config.cpu_offload else OffloadPolicy()}
    for layer in layer_modules(model):
        fully_shard(layer, **options)
    fully_shard(root, **options)


class ShardedReference(nn.Module):
    """A frozen reference model sharded like the policy: ``source(batch, indices)`` (a
    ``prefkit.train.refcache.ModelReference`` over ``model``) run as this root module's ``forward``, so
    the root's hooks gather the weights the engine reads directly. A collective, as every FSDP forward."""

    def __init__(self, model: nn.Module, source: Callable[..., Any]):
        super().__init__()
        self.model = model
        object.__setattr__(self, "source", source)

    def forward(self, batch: Any, indices: Tensor) -> Any:
        return self.source(batch, indices)


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> Tensor:
    """Clip the global gradient norm of (sharded) parameters; returns the norm before clipping."""
    from torch.distributed.tensor import DTensor

    norm = torch.nn.utils.clip_grad_norm_(list(params), max_norm)
    return norm.full_tensor() if isinstance(norm, DTensor) else norm


def has_dtensors(model: nn.Module) -> bool:
    """True when ``model``'s parameters are sharded (FSDP2 ``DTensor`` s)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """``model``'s whole state dict gathered on the main process (CPU tensors); {} on the others. A
    collective: every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


__all__ = ["DistributedConfig", "check_config", "make_accelerator", "check_accelerator", "is_sharded", "check_sharded_run",
           "layer_modules", "shard", "ShardedReference", "clip_grad_norm", "has_dtensors", "full_state_dict"]
