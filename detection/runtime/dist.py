"""Thin helpers over torch.distributed for runs launched by torchrun (or a single process)."""
from __future__ import annotations

import os
from typing import Any, List

import torch
import torch.distributed as dist


def init_from_env(device: torch.device) -> tuple[int, int]:
    """Initialise the process group when torchrun set WORLD_SIZE > 1. Returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        store = _attempt_store(world)
        if store is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, store=store, rank=int(os.environ["RANK"]), world_size=world)
        _OWN_GROUP.append(True)
    return dist.get_rank(), dist.get_world_size()


def _attempt_store(world: int):
    """Under torchrun, the agent's store with a prefix of its own per restart (``--max-restarts``), or None.

    torchrun shares its rendezvous store with the workers and keeps it across restarts, and
    init_process_group adds no prefix per attempt: the restarted workers then read the addresses the
    killed ones published and fail to connect ("Connection refused") or wait for them until the
    30-minute timeout. The workers of one torchrun agent are restarted together, with the same restart
    count; the agents of several nodes may count differently, so there torch's own store is kept."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    one_agent = os.environ.get("GROUP_WORLD_SIZE", "1") == "1"
    if attempt is None or not one_agent or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    base = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False)
    return dist.PrefixStore(f"detection/attempt_{attempt}", base)


_OWN_GROUP = []  # set when init_from_env created the process group (a caller's own group is left alone)


def shutdown() -> None:
    """Destroy the process group :func:`init_from_env` created (nothing in a single-process run)."""
    if _OWN_GROUP and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP.clear()


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        t = t.clone()
        dist.all_reduce(t)
        t /= dist.get_world_size()
    return t


def all_gather_objects(obj: Any) -> List[Any]:
    if not is_dist():
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    return device
