"""The learner ranks of a run, driven from the driver as one learner (`train.num_learners`).

With one rank this is a thin wrapper over the Learner actor. With N ranks the constructor forms their
torch.distributed group (rank 0 picks the rendezvous address and port, every rank joins), and each call goes where
it must: an update, a checkpoint load and a reference reset to every rank (each runs the same steps on its share,
learner/distributed.py); an adapter export, the probe, a checkpoint's state and the version to rank 0, whose
adapter and optimizer every rank shares. With a sharded base (train.shard_base) every forward pass needs every rank,
so the probe's greedy decoding (an export with probe prompts, `base_probe`) runs on all of them and the group waits
for all before handing back rank 0's result.

A learner is never restarted: its state is gone with it. When a call to a group of several fails, the surviving
ranks may be waiting in a collective for the one that failed, so the group kills them all (it is `broken` from
then on) and raises the dead rank's `RayActorError` when one died, which the driver turns into a clean stop naming
the last checkpoint (launch/driver.py `stop_if_learner_dies`).
"""

from __future__ import annotations

import time
from typing import Any

import ray
from ray import ObjectRef
from ray.util.placement_group import PlacementGroup, remove_placement_group

from learner.learner import Learner
from shared.handles import Actor
from shared.records import DpoStats, Payload, PreferenceBatch, ProbeSet, TrainBatch, TrainStats
from shared.restarts import DEAD_ACTOR_ERRORS

DEATH_WAIT_S = 30.0
"""After one rank's call failed, how long to wait for another rank's call to show that its actor died (a peer
that lost its partner mid-collective raises a plain error first)."""


class LearnerGroup:
    """N learner actors holding the same adapter and optimizer, trained as one."""

    def __init__(
        self, ranks: list[Actor[Learner]], placement: PlacementGroup | None = None, sharded: bool = False
    ) -> None:
        """`placement`: the placement group the ranks were started in, removed with them by `kill`; `sharded`: the
        ranks shard the base (train.shard_base), which they do as they join."""
        self.ranks = ranks
        self.placement = placement
        self.sharded = sharded and len(ranks) > 1
        self.broken = False
        if len(ranks) > 1:
            address, port = self._get([ranks[0].rendezvous.remote()])[0]
            self._get([r.join_group.remote(address, port, i, len(ranks)) for i, r in enumerate(ranks)])

    def train_step(self, batch: TrainBatch) -> TrainStats:
        """One update on the whole batch (every rank trains its share); rank 0's stats, the group's."""
        return self._on_all("train_step", batch)

    def train_pairs(self, batch: PreferenceBatch) -> DpoStats:
        """One DPO update (algo.objective=dpo, one rank: the config refuses DPO with train.num_learners > 1)."""
        return self._on_all("train_pairs", batch)

    def export_adapter(
        self, probe_prompt_ids: list[list[int]] | None = None, probe_tokens: int = 4
    ) -> ObjectRef[Payload]:
        """A reference to rank 0's `export_adapter` payload (an `AdapterPayload`, or a `WeightsPayload` with
        lora.mode=full or DoRA), not waited for (unless the probe must run on every rank of a sharded base)."""
        if probe_prompt_ids:
            return self._on_rank0("export_adapter", probe_prompt_ids, probe_tokens)
        return self.ranks[0].export_adapter.remote(probe_prompt_ids, probe_tokens)

    def base_probe(self, prompt_ids: list[list[int]], n_tokens: int = 4) -> ObjectRef[ProbeSet]:
        """A reference to rank 0's greedy decode of `prompt_ids` with the adapter off (Learner.base_probe)."""
        return self._on_rank0("base_probe", prompt_ids, n_tokens)

    def state(self) -> bytes:
        """Rank 0's checkpoint state: every rank holds the same adapter, reference and optimizer."""
        return self._get([self.ranks[0].state.remote()])[0]

    def load_state(self, blob: bytes) -> int:
        """Every rank loads the same checkpoint, whatever group size wrote it; returns the adapter version."""
        return self._on_all("load_state", blob)

    def reset_reference(self, reset_optimizer: bool = False) -> None:
        self._on_all("reset_reference", reset_optimizer)

    def current_version(self) -> int:
        return self._get([self.ranks[0].current_version.remote()])[0]

    def device(self) -> str:
        return self._get([self.ranks[0].device.remote()])[0]

    def timings(self) -> list[dict[str, float]]:
        """Each rank's `Learner.timings()` (seconds training and, of those, all-reducing), in rank order."""
        return self._get([r.timings.remote() for r in self.ranks])

    def alive(self) -> bool:
        """Whether every rank still answers (a broken group never does)."""
        if self.broken:
            return False
        try:
            ray.get([r.current_version.remote() for r in self.ranks])
        except DEAD_ACTOR_ERRORS:
            return False
        return True

    def kill(self) -> None:
        """End every rank and free the resources their placement group held."""
        for rank in self.ranks:
            ray.kill(rank)
        if self.placement is not None:
            remove_placement_group(self.placement)
            self.placement = None

    def _on_all(self, method: str, *args: Any) -> Any:
        """Call `method` on every rank (large arguments go through the object store once); rank 0's result."""
        if len(self.ranks) > 1:
            args = tuple(ray.put(a) if isinstance(a, (bytes, TrainBatch)) else a for a in args)
        return self._get([getattr(r, method).remote(*args) for r in self.ranks])[0]

    def _on_rank0(self, method: str, *args: Any) -> ObjectRef[Any]:
        """Rank 0's call of `method`, not waited for; with a sharded base every rank makes it (their forward passes
        are collectives) and all are waited for, so a rank that dies stops the group here."""
        if not self.sharded:
            return getattr(self.ranks[0], method).remote(*args)
        refs = [getattr(r, method).remote(*args) for r in self.ranks]
        self._get(refs)
        return refs[0]

    def _get(self, refs: list[ObjectRef[Any]]) -> list[Any]:
        """ray.get of one call per rank (or rank 0's alone), failing as soon as one fails (see the module doc)."""
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done[0])
            except Exception as err:
                if len(self.ranks) == 1:
                    raise
                raise self._break(pending, err) from None
        return ray.get(refs)

    def _break(self, pending: list[ObjectRef[Any]], first: Exception) -> Exception:
        """Kill every rank and return the error to raise: a dead rank's, when one died, else the first one."""
        deadline = time.monotonic() + DEATH_WAIT_S
        died = first if isinstance(first, DEAD_ACTOR_ERRORS) else None
        while died is None and pending and time.monotonic() < deadline:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            for ref in done:
                try:
                    ray.get(ref)
                except DEAD_ACTOR_ERRORS as err:
                    died = err
                except Exception:
                    pass  # a peer of the dead rank: its own error says less
        self.broken = True
        self.kill()
        return died or first
