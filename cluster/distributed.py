"""Data-parallel learners on Ray: a torch.distributed process group among learner actors (gloo on CPU, NCCL on
GPU), the gradient all-reduce and parameter broadcast they need, and the adapter broadcast to every engine.

Each learner actor is one process and one rank. The driver asks rank 0 where to meet, then every actor joins::

    addr, port = ray.get(learners[0].__ray_call__.remote(lambda self: rendezvous()))
    ray.get([a.__ray_call__.remote(lambda self, r: init_group(r, world, addr, port), r)
             for r, a in enumerate(learners)])

(or plain actor methods that call the same functions). Inside an actor, after ``init_group``::

    broadcast_params(params)              # once: every rank starts from rank 0's adapter
    n = all_sum(local_response_tokens)    # token-mean losses: normalise by the global count ...
    (loss_sum / n).backward()
    allreduce_grads(params, average=False)  # ... and sum; equal shards with per-shard means: average=True
    clip_grad_norm_(params, ...); optimizer.step()

Every rank then holds the same gradient, so the same AdamW step keeps the replicas identical; the update
equals one learner's on the whole batch (tests/test_data_parallel.py checks it with two actors on CPU).
After the step only rank 0 exports its adapter; :func:`broadcast_adapter` copies it through Ray's object
store to every rollout engine's node and loads it there, so engines need no shared filesystem.
"""
from __future__ import annotations

import datetime
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable

import torch


class DistributedError(RuntimeError):
    """The learners cannot form or use their process group; the message says what to check."""


def pick_backend(backend: str = "auto") -> str:
    """'auto' -> NCCL where this process sees a GPU, gloo otherwise."""
    if backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("gloo", "nccl"):
        raise DistributedError(f"backend must be auto, gloo or nccl, got {backend!r}")
    if backend == "nccl" and not torch.cuda.is_available():
        raise DistributedError("backend=nccl needs a GPU in every learner; use gloo on CPU (or auto)")
    return backend


def rendezvous() -> tuple[str, int]:
    """Run on rank 0: this node's address (as Ray sees it) and a free TCP port for the group to meet at."""
    try:
        import ray

        addr = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    except Exception:
        addr = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return addr, port


def init_group(rank: int, world_size: int, master_addr: str, master_port: int, backend: str = "auto",
               timeout_s: float = 300.0) -> str:
    """Join the default process group as ``rank`` of ``world_size``; returns the backend used.

    With NCCL the actor's GPU is ``cuda:0`` (Ray sets CUDA_VISIBLE_DEVICES per actor)."""
    import torch.distributed as dist

    if not 0 <= rank < world_size:
        raise DistributedError(f"rank {rank} is outside 0..{world_size - 1} (cluster.learner.count={world_size})")
    backend = pick_backend(backend)
    if dist.is_initialized():
        if dist.get_rank() == rank and dist.get_world_size() == world_size:
            return dist.get_backend()
        raise DistributedError(f"this process is already rank {dist.get_rank()} of {dist.get_world_size()}; "
                               "call destroy_group() before joining another group")
    if backend == "nccl":
        torch.cuda.set_device(0)
    try:
        dist.init_process_group(backend, init_method=f"tcp://{master_addr}:{master_port}", rank=rank,
                                world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:
        raise DistributedError(
            f"learner rank {rank}/{world_size} could not join the {backend} group at {master_addr}:{master_port}: "
            f"{str(e).splitlines()[0] if str(e) else e!r}. Check that every learner node can reach that address and "
            "port (firewall, GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME for the right network interface) and that all "
            f"{world_size} learners were started") from None
    return backend


def destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def _device() -> torch.device:
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def allreduce_grads(params: Iterable[torch.nn.Parameter], average: bool = True) -> None:
    """g_i <- sum_r g_i^(r) (divided by the world size when ``average``) for every trainable parameter, in one
    flat bucket (one collective for the whole adapter). A parameter without a gradient counts as zeros, so ranks
    whose shard never reached it still agree on shapes."""
    import torch.distributed as dist

    params = [p for p in params if p.requires_grad]
    if not dist.is_initialized() or not params:
        return
    world = dist.get_world_size()
    dev = _device()
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).to(dev, torch.float32) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(p.device, p.dtype).clone()
        offset += n


def all_sum(value: float) -> float:
    """sum_r value^(r) over the group (e.g. the global count of response tokens for a token-mean loss)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item())


def all_sum_tensor(x: torch.Tensor) -> torch.Tensor:
    """sum_r x^(r) elementwise over the group (in float64), returned on x's device and dtype; x itself outside a
    group. The learners' normalisers (token counts, whitening sums) go through this."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return x
    t = x.detach().to(_device(), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(x.device, x.dtype)


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; [obj] outside a group. For small things
    such as a step's metrics, whose keys may differ between ranks."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_params(params: Iterable[torch.nn.Parameter], src: int = 0) -> None:
    """Overwrite every rank's ``params`` with rank ``src``'s (call once after building the model, so replicas
    that initialised their adapters from different seeds start equal)."""
    import torch.distributed as dist

    params = list(params)
    if not dist.is_initialized() or not params:
        return
    dev = _device()
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1).to(dev, torch.float32) for p in params])
        dist.broadcast(flat, src=src)
        offset = 0
        for p in params:
            n = p.numel()
            p.copy_(flat[offset:offset + n].view_as(p).to(p.device, p.dtype))
            offset += n


# ---------------------------------------------------------------------------------------- adapter broadcast

def pack_adapter(adapter_dir: str | os.PathLike) -> dict[str, bytes]:
    """The files of a saved PEFT adapter (adapter_config.json, adapter_model.safetensors), by name."""
    d = Path(adapter_dir)
    if not (d / "adapter_config.json").exists():
        raise FileNotFoundError(f"no PEFT adapter at {d} (adapter_config.json missing)")
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def unpack_adapter(files: dict[str, bytes], dest: str | os.PathLike) -> str:
    """Write ``files`` to ``dest`` on this node, atomically (a reader never sees half an adapter); idempotent."""
    dest = Path(dest)
    if (dest / "adapter_config.json").exists():
        return str(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        for name, data in files.items():
            (tmp / Path(name).name).write_bytes(data)
        try:
            os.rename(tmp, dest)
        except OSError:  # another engine on this node wrote the same version first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(dest)


def _unpack_on_actor(_actor, files: dict[str, bytes], dest: str) -> str:
    return unpack_adapter(files, dest)


def broadcast_adapter(engines: list, adapter_dir: str | os.PathLike, version: int,
                      dest_root: str | None = None) -> list[int]:
    """Load the adapter at ``adapter_dir`` (on the driver's or rank 0's node) as ``version`` on every engine actor.

    The files go into Ray's object store once and are written on each engine's own node under
    ``dest_root/v<version>`` (default: that node's temp dir), then ``engine.load_adapter(path, version)``.
    Returns the versions the engines report (the caller's sync check compares them and a logprob probe).
    """
    import ray

    ref = ray.put(pack_adapter(adapter_dir))
    dest = str(Path(dest_root or Path(tempfile.gettempdir()) / "raypost-adapters") / f"v{version:06d}")
    paths = ray.get([e.__ray_call__.remote(_unpack_on_actor, ref, dest) for e in engines])
    return ray.get([e.load_adapter.remote(p, version) for e, p in zip(engines, paths)])
