"""`prolora submit` on a real two-node Ray cluster on this machine: a head and a second node, each started with
`ray start` on 127.0.0.1 with its own ports and its own custom resource, and token authentication.

A short run with two rollout workers and a learner group of two: the workers land on both nodes (SPREAD), the
learner ranks on one (PACK), the adapter reaches the remote node's engine through Ray's object store and the
served-adapter probe passes there, and the run directory is complete. Both nodes are stopped by signalling their
`ray start --block` processes, never by `ray stop`.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.integration.test_submit import RAY, _client_env, _free_ports, _prolora

pytestmark = pytest.mark.slow


def _node(env: dict[str, str], args: list[str], temp_dir: Path) -> subprocess.Popen:
    ports = _free_ports(6)
    names = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
        "node-manager-port",
        "object-manager-port",
    )
    port_args = [f"--{name}={port}" for name, port in zip(names, ports, strict=True)]
    return subprocess.Popen(
        [str(RAY), "start", "--block", "--node-ip-address=127.0.0.1", *args, *port_args]
        + [f"--temp-dir={temp_dir}", "--disable-usage-stats", "--num-gpus=0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def two_nodes():
    token = secrets.token_hex(32)
    gcs, dash, client = _free_ports(3)
    temp_dir = Path(tempfile.mkdtemp(prefix="prt2", dir="/tmp"))
    env = _client_env(token)
    env.update(RAY_AUTH_MODE="token", PATH=f"{Path(RAY).parent}:{env['PATH']}")
    env.pop("PYTHONPATH", None)
    head_args = [
        "--head",
        f"--port={gcs}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}",
        "--num-cpus=3",
        '--resources={"node_a": 1}',
    ]
    nodes = [_node(env, head_args, temp_dir)]
    address = f"http://127.0.0.1:{dash}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        _wait(lambda: requests.get(f"{address}/api/jobs/", headers=headers, timeout=5).status_code == 200, nodes)
        nodes.append(_node(env, [f"--address=127.0.0.1:{gcs}", "--num-cpus=3", '--resources={"node_b": 1}'], temp_dir))
        _wait(lambda: len(_alive_nodes(address, headers)) == 2, nodes)
        yield address, token, headers
    finally:
        for node in reversed(nodes):
            _stop(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait(ready, nodes: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + 180
    while True:
        for node in nodes:
            assert node.poll() is None, f"ray start exited: {node.stdout.read()[-3000:]}"
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, "the Ray cluster did not come up in 180 s"
        time.sleep(1)


def _alive_nodes(address: str, headers: dict[str, str]) -> dict[str, dict]:
    """node id -> resources of every alive node (Ray's state API)."""
    reply = requests.get(f"{address}/api/v0/nodes?detail=1&limit=100", headers=headers, timeout=10).json()
    rows = reply["data"]["result"]["result"]
    return {r["node_id"]: r["resources_total"] for r in rows if r["state"] == "ALIVE"}


def _actor_nodes(address: str, headers: dict[str, str]) -> dict[str, list[str]]:
    """class name -> the node ids its actors ran on (alive or dead)."""
    reply = requests.get(f"{address}/api/v0/actors?detail=1&limit=1000", headers=headers, timeout=10).json()
    out: dict[str, list[str]] = {}
    for row in reply["data"]["result"]["result"]:
        out.setdefault(row["class_name"], []).append(row["node_id"])
    return out


def test_submit_spreads_engines_over_two_nodes_and_packs_the_learner_group(two_nodes, tiny_model, tmp_path):
    address, token, headers = two_nodes
    run_dir = tmp_path / "two-node-run"
    sets = [
        f"model.path={tiny_model}",
        "eval.size=8",
        "eval.n_samples=8",
        "rollout.prompts_per_step=4",
        "rollout.num_workers=2",
        "train.num_learners=2",
        "train.num_threads=1",
    ]
    proc = _prolora(
        _client_env(token),
        "submit",
        "--address",
        address,
        "--steps",
        "2",
        "--run-dir",
        str(run_dir),
        *[a for s in sets for a in ("--set", s)],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = proc.stdout.split("submitted job ")[1].split()[0]

    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(address, headers=headers)
    deadline = time.monotonic() + 900
    while (status := jobs.get_job_status(job_id).value) not in {"SUCCEEDED", "FAILED", "STOPPED"}:
        assert time.monotonic() < deadline, f"job still {status} after 900 s:\n{jobs.get_job_logs(job_id)[-3000:]}"
        time.sleep(3)
    logs = jobs.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-4000:]

    nodes = _alive_nodes(address, headers)
    node_b = next(n for n, res in nodes.items() if "node_b" in res)
    placed = _actor_nodes(address, headers)
    assert set(placed["RolloutWorker"]) == set(nodes)  # one engine on each node
    assert len(placed["Learner"]) == 2 and len(set(placed["Learner"])) == 1  # the group packed on one node
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if not r.get("eval")]
    assert [r["step"] for r in steps] == [1, 2]
    # Step 2's batch came after the hot-load of version 1 into both engines, node_b's among them, probe checked.
    assert steps[1]["adapter_version"] == 1 and 0 <= steps[1]["probe_max_diff"] < 1e-3
    assert node_b in placed["RolloutWorker"]
    for name in ("config.yaml", "rewards.yaml", "prompt_history.jsonl"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "adapters" / "final" / "adapter_model.safetensors").is_file()
    assert any((run_dir / "checkpoints").iterdir()) and any((run_dir / "rollouts").iterdir())
    assert [r["step"] for r in records if r.get("eval")] == [0, 2]
