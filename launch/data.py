"""Prompt order for training: a seeded shuffle of the training rows, reshuffled every epoch.

The order depends only on the seed and the position, so a resumed run can continue the same sequence from a saved
position (`state()` / `from_state()`).
"""

from __future__ import annotations

import random


class PromptSampler:
    """Yields batches of training rows in a reproducible order; epochs wrap around."""

    def __init__(self, rows: list[dict], seed: int, epoch: int = 0, index: int = 0) -> None:
        if not rows:
            raise ValueError("the training split is empty")
        self._rows = rows
        self._seed = seed
        self.epoch = epoch
        self.index = index
        self._order = self._permutation(epoch)

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
            batch.append(self._rows[self._order[self.index]])
            self.index += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}
