"""Processes for DistributedDataParallel: spawning, torchrun detection and small collectives.

`--gpus N` spawns N processes on this machine (NCCL on CUDA, gloo on CPU). Under `torchrun`
(environment variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) each process
runs the same entry point and joins the group that torchrun describes, e.g.

    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        -m sparseinst_cli train --config r50_giam --data coco_2017 --batch 64
"""
from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ..errors import RunError

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the group and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def under_torchrun() -> bool:
    """True when torchrun (or another launcher) set the env:// rendezvous variables."""
    return all(v in os.environ for v in TORCHRUN_VARS) and int(os.environ["WORLD_SIZE"]) > 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_group(
    *, rank: int, world_size: int, local_rank: int, device_type: str, init_method: str,
    timeout_min: float = 30.0,
) -> DistContext:
    """Join the process group; each CUDA process takes GPU `local_rank`."""
    backend = "nccl" if device_type == "cuda" else "gloo"
    device = "cpu"
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world_size,
        timeout=timedelta(minutes=timeout_min),
    )
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def init_from_torchrun(device_type: str) -> DistContext:
    return init_group(
        rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ["LOCAL_RANK"]), device_type=device_type, init_method="env://",
    )


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def spawn(worker: Callable[..., Any], nprocs: int, args: tuple[Any, ...]) -> Any:
    """Run `worker(rank, *args)` in `nprocs` fresh processes; returns rank 0's return value.

    Ctrl-C reaches every child through the terminal's process group and SIGTERM sent to this
    process is forwarded; the children save a checkpoint and stop together. An error in a
    child stops the others and is raised here with its type (UserError, RunError, ...).
    """
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_child, args=(worker, rank, args, queue)) for rank in range(nprocs)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signum)

    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # children handle Ctrl-C themselves
    old_term = signal.signal(signal.SIGTERM, forward)
    try:
        messages = _join_all(procs, queue)
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
    return _collect(messages, procs)


def _child(worker: Callable[..., Any], rank: int, args: tuple[Any, ...], queue: Any) -> None:
    """Process entry: run the worker, send its result or its error to the parent."""
    try:
        result = worker(rank, *args)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which re-raises
        if not _picklable(exc):
            exc = RunError(f"{type(exc).__name__}: {exc}")
        queue.put(("error", rank, exc))
        shutdown()
        raise SystemExit(1) from None
    queue.put(("result", rank, result))


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001
        return False
    return True


def _join_all(procs: list[Any], queue: Any) -> list[tuple]:
    """Wait for every process, reading their messages meanwhile (a child blocks in `put` until
    a large result is read); once one fails, stop the rest (they would wait for it forever)."""
    messages: list[tuple] = []
    while any(p.is_alive() for p in procs):
        while not queue.empty():
            messages.append(queue.get())
        for p in procs:
            p.join(timeout=0.05)
            if p.exitcode not in (None, 0):
                for other in procs:
                    if other.is_alive():
                        other.terminate()
    while not queue.empty():
        messages.append(queue.get())
    return messages


def _collect(messages: list[tuple], procs: list[Any]) -> Any:
    errors = sorted((m for m in messages if m[0] == "error"), key=lambda m: m[1])
    if errors:
        raise errors[0][2]
    failed = [i for i, p in enumerate(procs) if p.exitcode != 0]
    if failed:
        raise RunError(
            f"training process {failed[0]} exited with status {procs[failed[0]].exitcode}; "
            "see the messages above"
        )
    return next((m[2] for m in messages if m[0] == "result" and m[1] == 0), None)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small float tensor over processes (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
    return values


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order, on every process."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
