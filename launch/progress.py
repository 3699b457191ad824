"""What the user sees during a run: prolora's own lines on the terminal, everything else in `<run dir>/logs/`.

Progress: a tqdm bar on a terminal, plain log lines otherwise (Ray jobs, CI, nohup). Both show the step, the mean
reward, the latest held-out pass@1, rollout tokens per second, the adapter hot-load time and the time left; when
most completions of a step hit the token limit, the share truncated too (with a one-time warning: a model that never
stops learns from cut-off text, and length-aware rewards see only the cap); while a reward-hacking signature holds
(shared/hacking.py) they show `hacking <names>`, and a `[hacking]` warning line with the evidence is printed
whenever the set of signatures that hold changes. The bar computes its own ETA; the plain
lines estimate it from the wall time per step so far, which includes the periodic held-out evaluations and so does
not undershoot on long runs.

Everything else (engine, Ray and library output) goes to files, unless `log.verbose` (`prolora train --verbose`)
prints it all to the terminal instead, as Ray and vLLM would on their own:

    logs/actors.log   everything the run's Ray actors print: vLLM engine start-up and warnings, transformers and
                      peft in the learner, reward functions (a local Ray instance only; a cluster keeps them in
                      its job logs)
    logs/driver.log   the driver process's library logs and warnings (Ray start-up, transformers), and what native
                      code writes to its stderr

Why file descriptors and not only logging levels: vLLM, Ray's C++ core and torch write to stdout/stderr directly,
below Python's logging. Each actor process points descriptors 1 and 2 at actors.log before the actor exists (a Ray
worker_process_setup_hook); the driver points descriptor 2 at driver.log and keeps `sys.stderr` on the terminal, so
whatever prolora prints through Python still reaches the user.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from tqdm import tqdm

from shared.hacking import HackingSignals, describe
from shared.step_record import HACKING_PREFIX

FIRED = HACKING_PREFIX + "fired"


def format_duration(seconds: float) -> str:
    """12s, 3m05s, 2h07m."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def step_summary(record: dict, pass_at_1: float) -> dict[str, str]:
    """The figures one progress update shows, from a step record of metrics.jsonl (GRPO or DPO)."""
    if record.get("objective") == "dpo":
        return {
            "loss": f"{record['loss']:.3f}",
            "pref_acc": f"{record['pref_accuracy']:.2f}",
            "pass@1": f"{pass_at_1:.3f}",
        }
    summary = {
        "reward": f"{record['reward_mean']:.3f}" if record.get("reward_mean") is not None else "nan",
        "pass@1": f"{pass_at_1:.3f}",
        "tok/s": f"{record['gen_tokens'] / max(record['gen_s'], 1e-9):.0f}",
        "hotload_ms": "-" if record.get("sync_ms") is None else f"{record['sync_ms']:.0f}",
    }
    if mostly_truncated(record):
        summary["truncated"] = f"{record['truncated_frac']:.0%}"
    if record.get(FIRED):
        summary["hacking"] = ",".join(record[FIRED])
    return summary


MOSTLY_TRUNCATED = 0.5
"""Share of a step's completions cut at max_new_tokens above which progress says so."""


def mostly_truncated(record: dict) -> bool:
    return (record.get("truncated_frac") or 0.0) > MOSTLY_TRUNCATED


def hacking_warning(record: dict) -> str:
    """The `[hacking]` line for a step record whose signatures fired."""
    signals = HackingSignals(
        **{k.removeprefix(HACKING_PREFIX): v for k, v in record.items() if k.startswith(HACKING_PREFIX)}
    )
    return f"[hacking] step {record['step']}: reward hacking suspected: {describe(signals)}"


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
        self._fired: list[str] = []
        self._start = time.monotonic()
        self._failures_noted = False
        self._tty = self._stream.isatty()
        self._bar = (
            tqdm(total=total_steps, initial=start, unit="step", dynamic_ncols=True, file=self._stream)
            if self._tty
            else None
        )
        self._line(f"[eval] step {start}: {first_eval.summary()}")
        self._warned_truncated = False

    def update(self, record: dict) -> None:
        summary = step_summary(record, self._pass1)
        step = record["step"]
        if record.get(FIRED, []) != self._fired:
            self._fired = list(record.get(FIRED, []))
            if self._fired:
                self._line(hacking_warning(record))
        if "truncated" in summary and not self._warned_truncated:
            self._warned_truncated = True
            self._line(
                f"[prolora] warning: step {step}: {summary['truncated']} of completions hit rollout.max_new_tokens "
                "without an EOS; raise rollout.max_new_tokens, or check that prompts reach the model in its chat "
                "format (task.prompt_format) so it can end its turn"
            )
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


ACTOR_LOG_ENV = "PROLORA_ACTOR_LOG"
"""Set in the Ray job's env_vars: the file the setup hook sends an actor process's output to."""
LIBRARY_LOGGERS = (
    "ray",
    "vllm",
    "torch",
    "torchao",
    "bitsandbytes",
    "transformers",
    "peft",
    "datasets",
    "huggingface_hub",
    "py.warnings",
)
"""Python loggers the driver sends to driver.log instead of the terminal."""
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' and datasets' progress bars follow huggingface_hub's
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


IMPORT_TIME_LOGGERS = ("torchao", "bitsandbytes", "torch.utils._pytree")
"""Loggers that warn while transformers imports its quantizers, before a run directory exists to log to: kernels
for other hardware that torchao and bitsandbytes did not load, and torch's notes on their enums. Only their errors
are shown."""


def quiet_libraries() -> None:
    """Progress bars and advisory warnings of the HF libraries off for this process and the ones it starts, and the
    import-time warnings of the quantization libraries; call it before they are imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name in IMPORT_TIME_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def log_dir(run_dir: Path) -> Path:
    path = run_dir / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ray_quiet_options(run_dir: Path) -> dict:
    """ray.init arguments that keep actor output in logs/actors.log and Ray's own info lines off the terminal."""
    return {
        "log_to_driver": False,
        "logging_level": logging.ERROR,
        "runtime_env": {
            "worker_process_setup_hook": "launch.progress.redirect_actor_output",
            "env_vars": {ACTOR_LOG_ENV: str(log_dir(run_dir) / "actors.log"), **QUIET_ENV},
        },
    }


def redirect_actor_output() -> None:
    """Ray worker_process_setup_hook: this process's stdout and stderr (descriptors included) append to the file
    named by PROLORA_ACTOR_LOG."""
    path = os.environ.get(ACTOR_LOG_ENV)
    if not path:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


@contextmanager
def driver_output_to(run_dir: Path, verbose: bool) -> Iterator[None]:
    """While open (and not `verbose`): descriptor 2 and the library loggers write to logs/driver.log, `sys.stderr`
    stays on the terminal. Restored on exit."""
    if verbose:
        yield
        return
    path = log_dir(run_dir) / "driver.log"
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved_loggers = [(lg.handlers[:], lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.handlers, lg.propagate = [handler], False
    logging.captureWarnings(True)
    sys.stderr.flush()
    terminal_fd = os.dup(2)
    terminal, saved_stderr = os.fdopen(os.dup(terminal_fd), "w", buffering=1), sys.stderr
    log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stderr = terminal
    try:
        yield
    finally:
        terminal.flush()
        sys.stderr = saved_stderr
        os.dup2(terminal_fd, 2)
        os.close(terminal_fd)
        terminal.close()
        logging.captureWarnings(False)
        for lg, (handlers, propagate) in zip(loggers, saved_loggers, strict=True):
            lg.handlers, lg.propagate = handlers, propagate
        handler.close()
