"""Several processes, one search: ``torchrun --nproc-per-node=K -m vnas search ...`` (or ``... resume DIR``).

Data parallel, written out rather than hidden in ``DistributedDataParallel``, because two of the search's
gradients are outside what DDP's hooks see: the posterior q(θ) sits outside the supernet, and the
architecture step takes its NLL gradient with ``torch.autograd.grad`` with respect to θ. So each step:

- every rank takes its shard of the global batch: rank r of K gets images [r·B/K, (r+1)·B/K) of each batch
  of B (the same permutation and augmentation on every rank: ``vnas.data.Batches`` is seeded by (seed, epoch));
- it computes its gradients; ``Group.mean_`` averages them across ranks, in one flat all-reduce per step
  and per objective: the weights' before the gradient is clipped (so the clip sees the global gradient, as
  one process with the whole batch would), the architecture parameters' after the architecture backward;
- so K processes take the steps of one process that averages the gradients of the same K shards
  (``SearchConfig.accumulate = K``), BatchNorm statistics per shard in both (tests/test_distributed.py).

Each rank draws its own samples θ ~ q (its torch RNG is reseeded per rank after the model is built: the
same initial weights, different sampling noise); at the end of an epoch the ranks average BN running
statistics, take rank 0's posterior state (a random-search hook draws its candidates there), and rank 0
alone writes the run folder, with every rank's RNG state in its checkpoint so that a resume repeats exactly.

NCCL on GPUs, gloo on CPU (what the tests use). Place in the flow: beside ``runs``; used by ``search``.
Introduced in chapters/06_full_search.py.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


class DistributedError(RuntimeError):
    """A multi-process run that cannot start or cannot go on; the message says what to do."""


class Group:
    """The processes of one run: ``rank`` of ``world``. ``Group()`` is the single process (every method is
    then a no-op); ``from_env()`` joins the group that torchrun set up."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0

    def __repr__(self) -> str:
        return f"Group(rank={self.rank}, world={self.world})"

    @classmethod
    def from_env(cls, device: torch.device | None = None, timeout_s: float | None = None) -> Group:
        """The group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT),
        or the single process when WORLD_SIZE is absent or 1. On CUDA each rank takes GPU LOCAL_RANK."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        if dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
        if cuda:
            local = int(os.environ.get("LOCAL_RANK", rank))
            if local >= torch.cuda.device_count():
                raise DistributedError(f"LOCAL_RANK {local} but this machine has {torch.cuda.device_count()} "
                                       "GPU(s): start at most that many processes per node (--nproc-per-node).")
            torch.cuda.set_device(local)
        timeout = timeout_s if timeout_s is not None else float(os.environ.get("VNAS_DIST_TIMEOUT", "600"))
        # a rank that dies leaves the others waiting in a collective: the timeout bounds the wait
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout))
        return cls(rank, world)

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: GPU LOCAL_RANK on CUDA."""
        if device.type == "cuda" and self.world > 1:
            return torch.device("cuda", torch.cuda.current_device())
        return device

    def shard_size(self, batch_size: int, what: str = "batch_size") -> int:
        """Images per rank of a global batch of ``batch_size``; an error when the world does not divide it."""
        if batch_size % self.world:
            fits = [k for k in range(2, min(batch_size, 16) + 1) if batch_size % k == 0]
            raise DistributedError(
                f"{what}={batch_size} is not divisible by the world size {self.world}: each of the {self.world} "
                f"processes takes {what}/{self.world} images of every batch. Start a number of processes that "
                f"divides it (--nproc-per-node {' or '.join(map(str, fits[:4])) or 1}), or set {what} to a multiple "
                f"of {self.world}.")
        return batch_size // self.world

    def shard(self, batch: tuple[torch.Tensor, ...], size: int) -> tuple[torch.Tensor, ...]:
        """This rank's ``size`` images of a global batch (all of it in one process)."""
        if self.world == 1:
            return batch
        return tuple(t[self.rank * size:(self.rank + 1) * size] for t in batch)

    def _collective(self, what: str, fn, *args):
        try:
            return fn(*args)
        except (RuntimeError, dist.DistBackendError) as err:
            raise DistributedError(
                f"Rank {self.rank} of {self.world}: {what} failed ({type(err).__name__}: {str(err).splitlines()[0]}). "
                "Another process of this run probably stopped: its own error is printed above (torchrun "
                "names the failed rank). Nothing saved is lost: the run folder holds the last finished epoch; "
                f"continue with `torchrun --nproc-per-node={self.world} -m vnas resume RUN_FOLDER`.") from err

    def mean_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place, with one all-reduce (a no-op alone)."""
        tensors = [t for t in tensors if t is not None]
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1).float() for t in tensors])
        self._collective("averaging gradients", dist.all_reduce, flat)
        flat /= self.world
        i = 0
        for t in tensors:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (picklable; a no-op alone)."""
        if self.world == 1:
            return obj
        box = [obj]
        self._collective("broadcasting rank 0's state", dist.broadcast_object_list, box, 0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj`` as a list on rank 0 (``[obj]`` alone; None on the other ranks)."""
        if self.world == 1:
            return [obj]
        box = [None] * self.world if self.main else None
        self._collective("gathering every rank's state", dist.gather_object, obj, box, 0)
        return box

    def barrier(self) -> None:
        if self.world > 1:
            self._collective("waiting for the other ranks", dist.barrier)

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of rank ``rank``'s sampling noise (rank 0 keeps ``seed``, so that one process draws what
    it always drew). Introduced in chapters/06_full_search.py."""
    return seed + 1_000_003 * rank


__all__ = ["DistributedError", "Group", "rank_seed"]
