"""Runs as Ray jobs: `prolora submit`, `jobs`, `logs` and `stop`, through Ray's job submission API.

A submitted run is `python -m launch.cli train CONFIG --set ...` executed on the cluster, with this repository
uploaded as the job's working directory (run directories, virtual environments, caches and .git left out), so the
same config file runs locally and on a cluster. The cluster's Python must already have prolora's dependencies:
start it from the environment prolora is installed in (`source .venv/bin/activate && ray start --head`), so
`python` on its nodes is that environment's.

Token authentication. Current Ray turns it on for `ray start --head` whenever a token exists. Ray 2.60's
JobSubmissionClient only sends the token when the *client's* process is in token mode (RAY_AUTH_MODE=token), so a
client that merely has the token gets "401 Missing authentication token". We therefore ask the dashboard
(GET /api/authentication_mode, public) whether it wants a token and, if so, send
`Authorization: Bearer <token>` ourselves, with the token loaded by Ray's own loader, which looks in this order:
the RAY_AUTH_TOKEN environment variable, the file named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token. The token
never comes from the command line or the config, so it does not end up in shell history, config.yaml or the job's
metadata.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import sys
import time
from pathlib import Path
from typing import cast

import requests

from launch.actors import SKIP_RESOURCE_CHECK_ENV, check_fits
from shared.config import Config
from shared.errors import UserError

WORKING_DIR_EXCLUDES = [
    "runs/",
    ".venv/",
    "venv/",
    ".git/",
    "__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".cache/",
    "*.egg-info/",
    "build/",
    "wandb/",
    "*.parquet",
    "*.safetensors",
]
"""Left out of the uploaded working directory: outputs, environments and caches (Ray caps uploads at 100 MiB)."""
JOB_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # engine core in-process inside each rollout actor (see launch/actors.py)
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONUNBUFFERED": "1",  # so `prolora logs --follow` shows progress lines as they happen
}
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    if "://" not in address:
        address = f"http://{address}"
    return address.rstrip("/")


def auth_headers(address: str) -> dict[str, str]:
    """The Authorization header the dashboard at `address` needs (none when it does not use token auth)."""
    try:
        reply = requests.get(f"{address}/api/authentication_mode", timeout=10)
    except requests.RequestException as err:
        raise UserError(f"cannot reach the Ray dashboard at {address}: {err}") from None
    mode = reply.json().get("authentication_mode") if reply.ok else None
    if mode != "token":
        return {}
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]  # Cython class, not in the stub

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        raise UserError(
            f"the cluster at {address} uses token authentication but no token was found: set RAY_AUTH_TOKEN, or "
            "RAY_AUTH_TOKEN_PATH to a file holding it, or put it in ~/.ray/auth_token (`ray get-auth-token` on the "
            "head prints it)"
        )
    return {"Authorization": f"Bearer {loader.get_raw_token(ignore_auth_mode=True).strip()}"}


def job_client(address: str | None, headers: dict[str, str] | None = None):
    """A JobSubmissionClient for the cluster, authenticated when the cluster asks for it."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = resolve_address(address)
    try:
        return JobSubmissionClient(address, headers=auth_headers(address) if headers is None else headers)
    except AuthenticationError as err:
        raise UserError(f"the cluster at {address} rejected the token: {err}") from None
    except ConnectionError as err:
        raise UserError(str(err)) from None


def cluster_nodes(address: str, headers: dict[str, str]) -> list[dict[str, float]]:
    """Total resources of every alive node, from the cluster's state API."""
    from ray.util.state.api import StateApiClient
    from ray.util.state.common import ListApiOptions, NodeState, StateResource

    client = StateApiClient(address, headers={"Content-Type": "application/json", **headers})
    options = ListApiOptions(filters=[("state", "=", "ALIVE")])
    nodes = cast("list[NodeState]", client.list(StateResource.NODES, options, False))  # NODES lists NodeStates
    return [dict(n.resources_total) for n in nodes]


def repository_root() -> Path:
    """The source checkout the job uploads as its working directory."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise UserError(f"`prolora submit` needs a source checkout of prolora; {root} is not one")
    return root


def train_command(config_path: str | Path | None, overrides: list[str], root: Path, resume: str | None = None) -> str:
    """The job's entrypoint: `prolora train` with the same file (relative to the repository) and overrides."""
    args = ["python", "-m", "launch.cli", "train"]
    if config_path:
        path = Path(config_path).resolve()
        if not path.is_relative_to(root):
            raise UserError(
                f"config file {config_path} is outside the repository {root}, which is what the job "
                "uploads; move it into the repository (e.g. configs/)"
            )
        args.append(str(path.relative_to(root)))
    for assignment in overrides:
        args += ["--set", assignment]
    if resume:
        args += ["--resume", resume]
    return " ".join(shlex.quote(a) for a in args)


def submit(
    config: Config,
    config_path: str | Path | None,
    overrides: list[str],
    address: str | None,
    resume: str | None = None,
    check_resources: bool = True,
) -> str:
    """Submit a training run as a Ray job; returns the job's submission id."""
    root = repository_root()
    entrypoint = train_command(config_path, overrides, root, resume)
    address = resolve_address(address)
    headers = auth_headers(address)
    client = job_client(address, headers)
    if check_resources:
        check_fits(config, cluster_nodes(address, headers), address)
    env = dict(JOB_ENV)
    if not check_resources:
        env[SKIP_RESOURCE_CHECK_ENV] = "1"
    job_id = f"prolora-{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"
    return client.submit_job(
        entrypoint=entrypoint,
        submission_id=job_id,
        runtime_env={"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env},
        metadata={"prolora_run": config.run.name},
    )


def print_jobs(address: str | None) -> None:
    jobs = sorted(job_client(address).list_jobs(), key=lambda j: j.start_time or 0)
    if not jobs:
        print("no jobs")
        return
    print(f"{'JOB':<42} {'STATUS':<10} {'STARTED':<19} {'DURATION':>9}  ENTRYPOINT")
    for job in jobs:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.start_time / 1e3)) if job.start_time else "-"
        end = job.end_time or time.time() * 1e3
        duration = f"{(end - job.start_time) / 1e3:.0f}s" if job.start_time else "-"
        entry = job.entrypoint if len(job.entrypoint) <= 60 else job.entrypoint[:57] + "..."
        print(f"{job.submission_id or job.job_id:<42} {job.status.value:<10} {started:<19} {duration:>9}  {entry}")


def print_logs(address: str | None, job_id: str, follow: bool) -> str:
    """Print the job's logs (following them until the job ends with `follow`); returns the job's status."""
    client = job_client(address)
    _status(client, job_id)  # an unknown job fails here with a clear message
    if not follow:
        sys.stdout.write(client.get_job_logs(job_id))
        return _status(client, job_id)

    async def _tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(_tail())
    return _status(client, job_id)


def stop(address: str | None, job_id: str, wait_s: float = 60.0) -> str:
    """Ask the cluster to stop a job and wait (up to wait_s) until it has; returns its status."""
    client = job_client(address)
    _status(client, job_id)
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_s
    while (status := _status(client, job_id)) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    return status


def _status(client, job_id: str) -> str:
    try:
        return client.get_job_status(job_id).value
    except RuntimeError as err:
        if "does not exist" in str(err) or "404" in str(err):
            raise UserError(f"no job {job_id!r} on {client.get_address()} (`prolora jobs` lists them)") from None
        raise
