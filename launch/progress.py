"""Live progress on the driver: a tqdm bar on a terminal, plain log lines otherwise (Ray jobs, CI, nohup).

Both show the step, the mean reward, the latest held-out pass@1, rollout tokens per second, the adapter hot-load
time and the time left. The bar computes its own ETA; the plain lines estimate it from the wall time per step so
far, which includes the periodic held-out evaluations and so does not undershoot on long runs.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def step_summary(record: dict, pass_at_1: float) -> dict[str, str]:
    """The figures one progress update shows, from a step record of metrics.jsonl."""
    return {
        "reward": f"{record['reward_mean']:.3f}" if record.get("reward_mean") is not None else "nan",
        "pass@1": f"{pass_at_1:.3f}",
        "tok/s": f"{record['gen_tokens'] / max(record['gen_s'], 1e-9):.0f}",
        "hotload_ms": "-" if record.get("sync_ms") is None else f"{record['sync_ms']:.0f}",
    }


class Progress:
    def __init__(
        self, total_steps: int, first_eval, log_every: int = 10, start: int = 0, stream: TextIO | None = None
    ) -> None:
        """`start` is the last step already done (a resumed run); `first_eval` the evaluation it starts from."""
        self._stream = stream or sys.stderr
        self._total = total_steps
        self._first_step = start
        self._log_every = log_every
        self._pass1 = first_eval.pass_at_1
        self._start = time.monotonic()
        self._failures_noted = False
        self._tty = self._stream.isatty()
        self._bar = (
            tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True, file=self._stream)
            if self._tty
            else None
        )
        self._line(f"[eval] step {start}: {first_eval.summary()}")

    def update(self, record: dict) -> None:
        summary = step_summary(record, self._pass1)
        step = record["step"]
        if self._bar is not None:
            self._bar.set_postfix(summary, refresh=False)
            self._bar.update(1)
        elif step % self._log_every == 0 or step in (self._first_step + 1, self._total):
            elapsed = time.monotonic() - self._start
            eta = elapsed / (step - self._first_step) * (self._total - step)
            fields = "  ".join(f"{k} {v}" for k, v in summary.items())
            self._line(
                f"[step {step}/{self._total}] {fields}  elapsed {format_duration(elapsed)}  eta {format_duration(eta)}"
            )
        self._note_failures(record)

    def _note_failures(self, record: dict) -> None:
        """Once per run: reward calls failed (the reward actors log each reward's first error, which by default
        lands in logs/actors.log, not on the terminal)."""
        if record.get("reward_failures") and not self._failures_noted:
            self._failures_noted = True
            self._line(
                f"[prolora] step {record['step']}: {record['reward_failures']} reward calls failed "
                f"(rewards.failure_policy decides what they score); each reward's first error is in "
                f"<run dir>/logs/actors.log, the count per step in metrics.jsonl (reward_failures)"
            )

    def eval(self, result, step: int) -> None:
        self._pass1 = result.pass_at_1
        self._line(f"[eval] step {step}: {result.summary()}")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _line(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self._stream)
        else:
            print(text, file=self._stream, flush=True)
