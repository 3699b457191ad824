"""Data parallelism for a group of learner ranks: the process group, each rank's share of a minibatch, and the
all-reduce that makes N ranks' update the one a single learner makes on the whole minibatch.

Every rank receives the whole batch and draws the same minibatch order (same seed), so the only thing that differs
between ranks is which rows of each minibatch they run forward and backward. The loss normaliser is computed over
the whole minibatch before it is split (learner/loss.py `loss_normaliser`), so each rank's gradient is its part of
the gradient of the unsplit loss, and their sum is the whole. After the sum every rank holds the same gradient,
clips it the same way and steps the same optimizer from the same state: the adapters never diverge, and a
checkpoint needs only rank 0's state. LoRA dropout draws from each rank's own RNG, so with `lora.dropout > 0` the
update is a different (equally valid) sample than a single learner's.

With `train.shard_base` the frozen base of every decoder layer is sharded across the ranks with FSDP2
(`fully_shard`): each rank keeps 1/N of those weights, and every forward pass all-gathers a layer's weights just
before it runs and frees them after. The LoRA weights (and the embeddings, final norm and LM head) stay whole and
replicated, outside FSDP, so everything above holds unchanged: the same all-reduce of LoRA gradients, the same
optimizer on every rank, whole adapter tensors on rank 0 for the export and the checkpoint. The price is lockstep:
a pass through the decoder is a collective, so every rank must make the same number of forward and backward passes.
`plan` pads a rank's micro-batches with empty ones (the learner runs a one-token pass that adds nothing) up to the
most any rank has; the probe's greedy decoding runs on every rank (learner/group.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from learner.logprobs import micro_batches
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


def plan(lengths: Sequence[int], budget: int, world: int, rank: int, lockstep: bool) -> list[list[int]]:
    """The micro-batches (row indices) `rank` runs for rows of these token lengths: its share, grouped by the token
    `budget`. With `lockstep` (a sharded base) padded with empty micro-batches to the most any rank has, since every
    rank can compute every rank's share."""

    def of(r: int) -> list[list[int]]:
        mine = share(lengths, world, r)
        return [[mine[k] for k in micro] for micro in micro_batches([lengths[j] for j in mine], budget)]

    own = of(rank)
    if not lockstep:
        return own
    return own + [[] for _ in range(max(len(of(r)) for r in range(world)) - len(own))]


def shard_frozen_base(causal_lm: torch.nn.Module, replicated: set[torch.nn.Parameter], device: torch.device) -> None:
    """Shard each decoder layer's parameters, except `replicated` ones (the LoRA weights), across the process group
    (FSDP2), then move what stays whole to `device`. The model may still be on the CPU: FSDP moves a layer to the
    device as it shards it, so a base that does not fit one device never has to."""
    decoder: torch.nn.Module = causal_lm.get_decoder()  # type: ignore[operator]
    kinds = set(getattr(causal_lm, "_no_split_modules", None) or ())
    layers = [m for m in decoder.modules() if type(m).__name__ in kinds]
    if not layers:
        raise ValueError(
            f"train.shard_base: no decoder layers found in {type(causal_lm).__name__} (its _no_split_modules names "
            f"{sorted(kinds) or 'none'}); set train.shard_base=false"
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in reversed(layers):  # innermost first, as FSDP nests
        fully_shard(layer, mesh=mesh, ignored_params=replicated, reshard_after_forward=True)
    # The decoder as the root unit (the passes call it, not the causal LM), holding no shard itself.
    whole = {p for p in decoder.parameters() if not isinstance(p, DTensor)}
    fully_shard(decoder, mesh=mesh, ignored_params=whole, reshard_after_forward=True)
    for tensor in [*causal_lm.parameters(), *causal_lm.buffers()]:
        if not isinstance(tensor, DTensor) and tensor.device != device:
            tensor.data = tensor.data.to(device)  # in place: tied weights stay tied, the optimizer keeps its params


def resident_base(causal_lm: torch.nn.Module) -> tuple[int, int]:
    """The base parameters (peft's LoRA weights left out) this rank holds, and the base's whole count."""
    local = total = 0
    for name, p in causal_lm.named_parameters():
        if "lora_" not in name:
            total += p.numel()
            local += p.to_local().numel() if isinstance(p, DTensor) else p.numel()
    return local, total


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
        self.sharded = False

    def shard(self, causal_lm: torch.nn.Module, replicated: set[torch.nn.Parameter], device: torch.device) -> None:
        """Shard the frozen base across the group (train.shard_base); from now on passes go in lockstep."""
        shard_frozen_base(causal_lm, replicated, device)
        self.sharded = True

    def plan(self, lengths: Sequence[int], budget: int) -> list[list[int]]:
        return plan(lengths, budget, self.world, self.rank, self.sharded)

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
