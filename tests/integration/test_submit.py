"""`prolora submit` against a real Ray head on 127.0.0.1 with token authentication.

The head runs as `ray start --head --block` in its own session with a fresh token in RAY_AUTH_TOKEN (the shared
~/.ray/auth_token is neither read nor written: Ray's loader prefers the environment variable), its own temp dir
and free ports, so it cannot collide with another Ray instance on the machine. It is stopped by signalling that
process, never by `ray stop`, which would end every Ray instance of the user.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow  # whole training runs (or a Ray cluster) per test

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _client_env(token: str | None, home: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    if token:
        env["RAY_AUTH_TOKEN"] = token
    if home:
        env["HOME"] = str(home)
    return env


def _prolora(env: dict[str, str], *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
    )


@pytest.fixture(scope="module")
def ray_head():
    token = secrets.token_hex(32)
    gcs, dash, client, agent, agent_grpc, metrics, env_agent, node_mgr, obj_mgr = _free_ports(9)
    temp_dir = Path(tempfile.mkdtemp(prefix="prt", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = _client_env(token)
    env.update(RAY_AUTH_MODE="token", PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    env.pop("PYTHONPATH", None)  # the job must import the uploaded working directory, not this checkout
    head = subprocess.Popen(
        [
            str(RAY),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={env_agent}",
            f"--node-manager-port={node_mgr}",
            f"--object-manager-port={obj_mgr}",
            "--num-cpus=4",
            "--num-gpus=0",
            f"--temp-dir={temp_dir}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, f"ray start exited: {head.stdout.read()[-3000:]}"
            try:
                # The job API answers only once the job module is up, not merely the HTTP server.
                if (
                    requests.get(
                        f"{address}/api/jobs/", headers={"Authorization": f"Bearer {token}"}, timeout=5
                    ).status_code
                    == 200
                ):
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the Ray head did not come up in 120 s"
            time.sleep(1)
        yield address, token
    finally:
        head.send_signal(signal.SIGTERM)  # --block: ray start shuts its node down on SIGTERM
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)  # anything of the head's session still alive
        except ProcessLookupError:
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_submit_runs_the_default_config_as_a_job(ray_head, tiny_model, tmp_path):
    address, token = ray_head
    env = _client_env(token)
    run_dir = tmp_path / "job-run"
    proc = _prolora(
        env,
        "submit",
        "--address",
        address,
        "--steps",
        "2",
        "--run-dir",
        str(run_dir),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "eval.size=8",
        "--set",
        "eval.n_samples=8",
        "--set",
        "rollout.prompts_per_step=4",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split("submitted job ")[1].split()[0]
    assert f"prolora logs {job_id} --follow --address {address}" in proc.stdout

    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(address, headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + 540
    while (status := jobs.get_job_status(job_id).value) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline, f"job still {status} after 540 s:\n{jobs.get_job_logs(job_id)[-3000:]}"
        time.sleep(3)
    logs = jobs.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if not r.get("eval")] == [1, 2]
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert f"run directory: {run_dir}" in logs
    assert "[step 2/2]" in logs  # plain progress lines: a job's output is not a terminal

    listed = _prolora(env, "jobs", "--address", address)
    assert job_id in listed.stdout and "SUCCEEDED" in listed.stdout, listed.stderr
    shown = _prolora(env, "logs", job_id, "--address", address, "--follow")
    assert shown.returncode == 0 and "run directory:" in shown.stdout, shown.stderr


def test_missing_token_is_a_clear_error(ray_head, tmp_path):
    address, _ = ray_head
    proc = _prolora(_client_env(None, home=tmp_path), "jobs", "--address", address)  # no env token, no token file
    assert proc.returncode == 2
    assert "uses token authentication but no token was found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_wrong_token_is_a_clear_error(ray_head, tmp_path):
    address, _ = ray_head
    proc = _prolora(_client_env("0" * 64, home=tmp_path), "jobs", "--address", address)
    assert proc.returncode == 2
    assert "rejected the token" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_the_cluster_cannot_hold_is_refused(ray_head, tiny_model, tmp_path):
    address, token = ray_head
    proc = _prolora(
        _client_env(token),
        "submit",
        "--address",
        address,
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "rollout.num_gpus=1",
        "--set",
        "rollout.num_workers=2",
    )
    assert proc.returncode == 2, proc.stdout
    assert "GPU: the run needs 2" in proc.stderr and "rollout.num_gpus" in proc.stderr
    assert "the cluster has 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_stop_a_running_job(ray_head, tiny_model, tmp_path):
    address, token = ray_head
    env = _client_env(token)
    proc = _prolora(
        env,
        "submit",
        "--address",
        address,
        "--steps",
        "500",
        "--run-dir",
        str(tmp_path / "long"),
        "--set",
        f"model.path={tiny_model}",
        "--set",
        "eval.size=4",
        "--set",
        "eval.n_samples=8",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split("submitted job ")[1].split()[0]
    stopped = _prolora(env, "stop", job_id, "--address", address)
    assert stopped.returncode == 0 and f"job {job_id}: STOPPED" in stopped.stdout, stopped.stdout + stopped.stderr
    unknown = _prolora(env, "logs", "no-such-job", "--address", address)
    assert unknown.returncode == 2 and "no job 'no-such-job'" in unknown.stderr, unknown.stderr
