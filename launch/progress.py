"""Live progress on the driver: a tqdm bar on a terminal, plain log lines otherwise (jobs, CI)."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total_steps: int, first_eval, log_every: int = 10, start: int = 0) -> None:
        self._tty = sys.stderr.isatty()
        self._bar = tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True) if self._tty else None
        self._log_every = log_every
        self._pass1 = first_eval.pass_at_1
        print(f"[eval] step {start}: {first_eval.summary()}", flush=True)

    def update(self, record: dict) -> None:
        summary = {
            "reward": f"{record['reward_mean']:.3f}",
            "pass@1": f"{self._pass1:.3f}",
            "tok/s": f"{record['gen_tokens'] / max(record['gen_s'], 1e-9):.0f}",
            "sync_ms": f"{record['sync_ms']:.0f}",
        }
        if self._bar is not None:
            self._bar.set_postfix(summary, refresh=False)
            self._bar.update(1)
        elif record["step"] % self._log_every == 0 or record["step"] == 1:
            print(f"[step {record['step']}] " + "  ".join(f"{k} {v}" for k, v in summary.items()), flush=True)

    def eval(self, result) -> None:
        self._pass1 = result.pass_at_1
        line = f"[eval] {result.summary()}"
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
