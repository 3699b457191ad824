"""Where a run's output goes (launch/progress.py): prolora's own lines on the terminal, library and native output
in <run dir>/logs/. Run in a child process, since the checks move file descriptors 1 and 2."""

from __future__ import annotations

import os
import subprocess
import sys

DRIVER = """
import logging, os, sys, warnings
from pathlib import Path
from launch.progress import driver_output_to
with driver_output_to(Path(sys.argv[1]), verbose=sys.argv[2] == "verbose"):
    print("own line", file=sys.stderr)
    os.write(2, b"native line\\n")
    logging.getLogger("ray").warning("ray line")
    logging.getLogger("learner.rewards.swap").warning("own warning")
    warnings.warn("library warning")
print("after", file=sys.stderr, flush=True)
os.write(2, b"native after\\n")
"""


def _child(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60, check=True
    )


def test_driver_keeps_its_own_lines_and_logs_the_rest(tmp_path):
    proc = _child(DRIVER, str(tmp_path), "quiet")
    assert proc.stderr.splitlines() == ["own line", "own warning", "after", "native after"]
    log = (tmp_path / "logs" / "driver.log").read_text()
    assert "native line" in log and "WARNING ray: ray line" in log and "library warning" in log


def test_verbose_driver_prints_everything(tmp_path):
    shown = _child(DRIVER, str(tmp_path), "verbose").stderr
    assert all(text in shown for text in ("own line", "native line", "ray line", "library warning", "native after"))
    assert not (tmp_path / "logs").exists()


def test_actor_processes_append_stdout_and_stderr_to_the_actor_log(tmp_path):
    log = tmp_path / "actors.log"
    log.write_text("earlier\n")
    code = (
        "import os, sys\nfrom launch.progress import redirect_actor_output\nredirect_actor_output()\n"
        "print('vllm says'); sys.stdout.flush(); os.write(2, b'native\\n')"
    )
    proc = _child(code, env={**os.environ, "PROLORA_ACTOR_LOG": str(log)})
    assert proc.stdout == proc.stderr == ""
    assert log.read_text() == "earlier\nvllm says\nnative\n"
