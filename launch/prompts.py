"""Prompt order for training, and the per-prompt pass-rate history that can retire solved prompts.

The order is a seeded shuffle of the training rows, reshuffled every epoch; it depends only on the seed and the
position, so a resumed run can continue the same sequence from a saved position (`state()` / `from_state()`).

`PassRateHistory` keeps, for every prompt, the pass rate of each visit (ProRL's view of where RL expands what the
model can solve). With `retire_after = K`, a prompt whose samples all passed on K consecutive visits is retired:
it teaches nothing more (all-equal rewards give zero advantage), and the sampler skips it from then on.

`PromptFeed` is the sampler as the rollout producer uses it when batches are made ahead of training
(rollout.max_staleness = k, launch/pipeline.py). Two things make an asynchronous run's data order reproducible:
- A retirement observed when step t is trained takes effect from the batch of step t+k+1, whatever the timing
  (the batches of t+1..t+k may already be drawn, or not). With k = 0 that is the next batch, as always; with k > 0
  a solved prompt may still be drawn in the k batches after the one that retired it. Dynamic sampling draws refill
  prompts while the batch is made, so its extra draws follow the same order but depend on the rewards, which in an
  asynchronous run depend on which adapter version generated the batch (timing), as it would be in any such run.
- The sampler position is recorded before each batch is drawn; a checkpoint after step t saves the position from
  before batch t+1 (the first batch not yet trained, possibly already drawn) plus the retirements not yet applied to
  it, so a resumed run draws batches t+1, t+2, ... exactly as the uninterrupted run did.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.chat import prompt_key
from shared.errors import UserError


class PromptSampler:
    """Yields batches of training rows in a reproducible order; epochs wrap around; retired prompts are skipped."""

    def __init__(self, rows: list[dict], seed: int, epoch: int = 0, index: int = 0) -> None:
        if not rows:
            raise ValueError("the training split is empty")
        self._rows = rows
        self._seed = seed
        self.epoch = epoch
        self.index = index
        self._order = self._permutation(epoch)
        self._retired: set[str] = set()
        self._prompts = {prompt_key(r["prompt"]) for r in rows}

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self._rows)))
        random.Random(f"{self._seed}-{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[dict]:
        batch: list[dict] = []
        while len(batch) < size:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            row = self._rows[self._order[self.index]]
            self.index += 1
            if prompt_key(row["prompt"]) not in self._retired:
                batch.append(row)
        return batch

    def retire(self, prompts: Iterable[str]) -> None:
        """Never yield these prompts again (named by `shared.chat.prompt_key`)."""
        self._retired.update(prompts)
        if self._prompts <= self._retired:
            raise UserError(
                f"all {len(self._prompts)} training prompts are retired; raise task.train_size or task.retire_after"
            )

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "retired": sorted(self._retired)}

    def load_state(self, state: dict) -> None:
        """Continue from a position saved by `state()` (same rows and seed)."""
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation(self.epoch)
        self._retired = set(state["retired"])


def solved_streak(pass_rates: Sequence[float], k: int) -> bool:
    """Whether the last k visits all passed in every sample (k = 0: never)."""
    return k > 0 and len(pass_rates) >= k and all(rate == 1.0 for rate in pass_rates[-k:])


@dataclass(frozen=True)
class PromptVisit:
    """One prompt's samples in one step: a line of prompt_history.jsonl."""

    step: int
    prompt: str
    """The prompt string, or its messages as JSON (`shared.chat.prompt_key`)."""
    samples: int
    """Completions with a reward (skipped ones do not count)."""
    passes: int
    """Completions whose reward reached task.pass_reward."""
    retired: bool
    """This visit retired the prompt."""


class PassRateHistory:
    """Pass rate of every visit of every prompt, and which prompts are retired."""

    def __init__(self, retire_after: int) -> None:
        self._retire_after = retire_after
        self.rates: dict[str, list[float]] = {}

    def observe(self, step: int, prompt: str, samples: int, passes: int) -> PromptVisit:
        rates = self.rates.setdefault(prompt, [])
        was_retired = solved_streak(rates, self._retire_after)
        if samples:
            rates.append(passes / samples)
        retired = not was_retired and solved_streak(rates, self._retire_after)
        return PromptVisit(step, prompt, samples, passes, retired)


class PromptFeed:
    """The sampler of a run whose batches may be drawn up to k steps ahead of training (see the module docstring).

    The producer calls `begin(step)` before drawing a batch; the trainer calls `retire_after(step, prompts)` once
    per trained step and `state(step)` for a checkpoint. A lock makes the two threads agree.
    """

    def __init__(self, sampler: PromptSampler, max_staleness: int) -> None:
        self.sampler = sampler
        self._delay = max_staleness + 1
        self._retirements: list[tuple[int, list[str]]] = []  # (first step it applies to, prompts)
        self._applied = 0  # retirements due at or before this step are in the sampler
        self._before: dict[int, dict] = {}  # step -> sampler state before its batch was drawn
        self._lock = threading.Lock()

    def begin(self, step: int) -> PromptSampler:
        """Before drawing batch `step`: apply the retirements due by then and record the position."""
        with self._lock:
            for due, prompts in self._retirements:
                if self._applied < due <= step:
                    self.sampler.retire(prompts)
            self._applied = step
            self._before[step] = self.sampler.state()
        return self.sampler

    def retire_after(self, step: int, prompts: Iterable[str]) -> None:
        """Step `step` was trained and retired `prompts`: skip them from the batch of step+k+1 on."""
        with self._lock:
            self._retirements = [(due, p) for due, p in self._retirements if due > step]
            if prompts := sorted(prompts):
                self._retirements.append((step + self._delay, prompts))
            self._before = {s: v for s, v in self._before.items() if s > step}

    def state(self, step: int) -> dict:
        """For a checkpoint after step `step`: the position before batch step+1 and the retirements not in it."""
        with self._lock:
            if step + 1 in self._before:
                sampler, applied = self._before[step + 1], step + 1
            else:  # batch step+1 not begun: the producer is not drawing, the live position is the one
                sampler, applied = self.sampler.state(), self._applied
            pending = [[due, p] for due, p in self._retirements if due > applied]
        return {"sampler": sampler, "pending_retirements": pending}

    def load_state(self, state: dict) -> None:
        """Continue from `state()` (a checkpoint without pending retirements is from a synchronous run)."""
        with self._lock:
            self.sampler.load_state(state["sampler"])
            self._retirements = [(due, list(p)) for due, p in state.get("pending_retirements", [])]
            self._applied = 0  # every pending retirement is applied when its step comes
            self._before = {}
