"""Data-parallel training under torchrun, in as few lines as it takes (nanoGPT's recipe).

    torchrun --standalone --nproc_per_node=4 train.py --preset gpu

torchrun starts one process per GPU (or CPU slot) and sets RANK, LOCAL_RANK and WORLD_SIZE.
Each process holds a full copy of the model and trains on its own slice of every global
batch; DistributedDataParallel averages the gradients across processes during backward,
so every copy takes the same optimizer step. A plain `python train.py` never calls
anything here except `world()`, which then says (rank 0 of 1).

Skip this file on a first read: nothing else in minivar depends on it.
"""
import contextlib
import os

import torch
import torch.distributed as dist


def world():
    """(rank, world_size) of this process: (0, 1) unless started by torchrun with several processes."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def setup(device_name):
    """Join the process group (nccl on CUDA, gloo on CPU). Returns the device name this rank uses."""
    if device_name in ("auto", "cuda") and torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl", device_id=torch.device(f"cuda:{local_rank}"))
        return f"cuda:{local_rank}"
    dist.init_process_group("gloo")
    return "cpu" if device_name == "auto" else device_name


def active():
    return dist.is_available() and dist.is_initialized()


def sum_across_ranks(tensor):
    """In place: every rank ends up with the sum over ranks (no-op in a single process)."""
    if active():
        dist.all_reduce(tensor)
    return tensor


def broadcast_from_rank_zero(tensor):
    """In place: every rank ends up with rank 0's values (where a decision must not depend on each
    rank's own random draws, which agree only as long as every rank draws the same numbers)."""
    if active():
        dist.broadcast(tensor, src=0)
    return tensor


def same_choice_on_every_rank(choice, options):
    """Rank 0's choice among `options`, on every rank (a setting timed by each process may differ)."""
    if not active():
        return choice
    index = torch.tensor([options.index(choice)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    return options[int(broadcast_from_rank_zero(index).item())]


def rows_from_all_ranks(tensor):
    """Concatenate every rank's rows, in rank order: the whole global batch, on every rank."""
    if not active():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (all ranks must stop at the same step)."""
    if not active():
        return flag
    t = torch.tensor([float(flag)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier():
    if active():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (downloading data, writing the token cache); the other
    ranks wait, then run it and find the work done."""
    rank = world()[0]
    if rank > 0:
        barrier()
    yield
    if rank == 0:
        barrier()


def cleanup():
    if active():
        dist.barrier()  # let rank 0 finish its last evaluation and checkpoint
        dist.destroy_process_group()
