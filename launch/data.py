"""Prompt order for training, and the per-prompt pass-rate history that can retire solved prompts.

The order is a seeded shuffle of the training rows, reshuffled every epoch; it depends only on the seed and the
position, so a resumed run can continue the same sequence from a saved position (`state()` / `from_state()`).

`PassRateHistory` keeps, for every prompt, the pass rate of each visit (ProRL's view of where RL expands what the
model can solve). With `retire_after = K`, a prompt whose samples all passed on K consecutive visits is retired:
it teaches nothing more (all-equal rewards give zero advantage), and the sampler skips it from then on.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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
        self._prompts = {r["prompt"] for r in rows}

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self._rows)))
        random.Random(f"{self._seed}-{epoch}").shuffle(order)
        return order

    def next_batch(self, size: int) -> list[dict]:
        batch = []
        while len(batch) < size:
            if self.index == len(self._order):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            row = self._rows[self._order[self.index]]
            self.index += 1
            if row["prompt"] not in self._retired:
                batch.append(row)
        return batch

    def retire(self, prompts: Iterable[str]) -> None:
        """Never yield these prompts again."""
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
