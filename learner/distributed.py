"""Data parallelism for a group of learner ranks: the process group, each rank's share of a minibatch, and the
all-reduce that makes N ranks' update the one a single learner makes on the whole minibatch.

Every rank receives the whole batch and draws the same minibatch order (same seed), so the only thing that differs
between ranks is which rows of each minibatch they run forward and backward. The loss normaliser is computed over
the whole minibatch before it is split (learner/loss.py `loss_normaliser`), so each rank's gradient is its part of
the gradient of the unsplit loss, and their sum is the whole. After the sum every rank holds the same gradient,
clips it the same way and steps the same optimizer from the same state: the adapters never diverge, and a
checkpoint needs only rank 0's state. LoRA dropout draws from each rank's own RNG, so with `lora.dropout > 0` the
update is a different (equally valid) sample than a single learner's.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from learner.loss import LossStats

GROUP_TIMEOUT = timedelta(minutes=30)
"""How long a collective waits for a peer: a rank that stopped without dying (the driver kills the group when one
dies) would otherwise hold the others forever."""


def rendezvous_address() -> tuple[str, int]:
    """This node's address and a free TCP port on it, for rank 0 to host the group's rendezvous."""
    import ray  # only inside a Ray actor: the learner itself runs without Ray

    host = ray.util.get_node_ip_address()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return host, sock.getsockname()[1]


def share(lengths: Sequence[int], world: int, rank: int) -> list[int]:
    """The row indices `rank` trains on, out of rows with these token lengths: longest first, each to the rank with
    the fewest tokens so far (ties to the lowest rank), so the ranks' work is balanced; ascending order."""
    load = [0] * world
    owner = [0] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        owner[i] = r
        load[r] += lengths[i]
    return [i for i in range(len(lengths)) if owner[i] == rank]


class DataParallel:
    """One rank's view of the group: joins it, and sums gradients and statistics across it. `comm_s` adds up the
    seconds spent in gradient all-reduces."""

    def __init__(self, address: str, port: int, rank: int, world: int, device: torch.device) -> None:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world, timeout=GROUP_TIMEOUT
        )
        self.rank, self.world = rank, world
        self.comm_s = 0.0

    def share(self, lengths: Sequence[int]) -> list[int]:
        return share(lengths, self.world, self.rank)

    def sum_gradients(self, params: Sequence[torch.nn.Parameter], loss: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) the gradients of `params` and this rank's `loss`, in one flat buffer; returns the summed
        loss. A rank with no rows this minibatch contributes zeros."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.reshape(1).to(grads[0].dtype)])
        start = time.perf_counter()
        dist.all_reduce(flat)
        self.comm_s += time.perf_counter() - start
        offset = 0
        for p, g in zip(params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
            offset += g.numel()
        return flat[-1].clone()

    def gather_stats(self, parts: list[LossStats]) -> list[LossStats]:
        """Every rank's micro-batch stats, in rank order."""
        gathered: list[list[LossStats] | None] = [None] * self.world
        dist.all_gather_object(gathered, parts)
        return [p for rank_parts in gathered for p in rank_parts or []]

    def gather_rows(self, mine: dict[int, torch.Tensor], n: int) -> list[torch.Tensor]:
        """Per-row tensors computed by their owners (`mine`: row index -> tensor, on the CPU), as one list of `n`."""
        gathered: list[dict[int, torch.Tensor] | None] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        out: list[torch.Tensor] = [torch.empty(0)] * n
        for rank_rows in gathered:
            for i, row in (rank_rows or {}).items():
                out[i] = row
        return out
