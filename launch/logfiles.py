"""Where a run's engine, Ray and library output goes: `<run dir>/logs/`, so the terminal shows prolora's own lines
(progress, evaluations, messages that need the user). `log.verbose` (`prolora train --verbose`) prints it all to the
terminal instead, as Ray and vLLM would on their own.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ACTOR_LOG_ENV = "PROLORA_ACTOR_LOG"
"""Set in the Ray job's env_vars: the file the setup hook sends an actor process's output to."""
LIBRARY_LOGGERS = ("ray", "vllm", "transformers", "peft", "datasets", "huggingface_hub", "py.warnings")
"""Python loggers the driver sends to driver.log instead of the terminal."""
QUIET_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' and datasets' progress bars follow huggingface_hub's
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
}


def quiet_libraries() -> None:
    """Progress bars and advisory warnings of the HF libraries off for this process and the ones it starts; call it
    before they are imported."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


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
            "worker_process_setup_hook": "launch.logfiles.redirect_actor_output",
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
