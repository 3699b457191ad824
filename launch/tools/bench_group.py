"""`python -m launch.tools.bench_group`: learner tokens per second with 1, 2, ... data-parallel ranks
(`train.num_learners`), the scaling efficiency, and where each rank's time goes (compute, gradient all-reduce).

Each group is started as a run starts it (launch/actors.py `start_learner`: a placement group packed on one node,
one actor per rank, a torch.distributed group), trains one warm-up step, then `--steps` timed steps on the same
batch of `--sequences` rows of `--length` tokens (the bench_learner model: random Qwen2 shapes, the real
151,936-token vocabulary). It prints, per group size N: tokens (prompt + completion) per second of wall time, the
efficiency tokens_per_s(N) / (N x tokens_per_s(1)), and the per-step seconds of each rank in compute and in the
gradient all-reduce. The all-reduce time includes waiting for the slowest rank, so imbalance shows up there.
With `--shard-base`, each group size of 2 or more is measured again with the frozen base sharded across the ranks
(`train.shard_base`, FSDP2): the row adds the share of the base each rank holds, and its compute seconds include
the base's all-gathers (every forward pass gathers each layer's weights; they are not timed apart).

Ranks share the machine's cores: unless `train.num_threads` is set, each of N ranks gets 1/N of them, so on a
machine with few cores N ranks have no more compute than one, and the efficiency says what the group costs rather
than what it gains. On GPUs (one per rank: --set train.num_gpus=1) it measures the real scaling.

    python -m launch.tools.bench_group --learners 1 2 [--shard-base] [--sequences 16] [--length 128] [--steps 3]
        [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ray
import torch

from launch.actors import start_learner
from launch.tools.bench_learner import VOCAB, bench_model
from shared.config import load_config
from shared.records import TrainBatch, TrainSample


def _batch(sequences: int, length: int, step: int) -> TrainBatch:
    g = torch.Generator().manual_seed(0)
    prompt = min(32, length // 4)
    samples = tuple(
        TrainSample(
            tuple(torch.randint(0, VOCAB, (prompt,), generator=g).tolist()),
            tuple(torch.randint(0, VOCAB, (length - prompt,), generator=g).tolist()),
            (-12.0,) * (length - prompt),
            advantage=1.0 if i % 2 else -1.0,
            adapter_version=0,
        )
        for i in range(sequences)
    )
    return TrainBatch(samples, step=step)


def measure(
    learners: int, model: Path, sequences: int, length: int, steps: int, overrides: list[str], shard_base: bool = False
) -> dict:
    """Start a group of `learners` ranks (the base sharded across them or not), train 1 + `steps` steps, and return
    its figures."""
    config = load_config(overrides=[f"train.num_learners={learners}", f"train.shard_base={shard_base}", *overrides])
    group = start_learner(config, str(model))
    try:
        held = ray.get([r.resident_parameters.remote() for r in group.ranks])
        group.train_step(_batch(sequences, length, 1))  # warm-up: allocator, thread pools, first all-reduce
        group.timings()
        start = time.perf_counter()
        for step in range(steps):
            group.train_step(_batch(sequences, length, step + 2))
        seconds = time.perf_counter() - start
        ranks = group.timings()
    finally:
        group.kill()
    return {
        "learners": learners,
        "shard_base": shard_base,
        "base_share_per_rank": [h["local"] / h["total"] for h in held],
        "tokens_per_s": sequences * length * steps / seconds,
        "step_s": seconds / steps,
        "compute_s_per_step": [(r["train_s"] - r["comm_s"]) / steps for r in ranks],
        "allreduce_s_per_step": [r["comm_s"] / steps for r in ranks],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--shard-base", action="store_true", help="also measure each N >= 2 with the base sharded (train.shard_base)"
    )
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence, prompt included")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per group size (after one warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    model = bench_model(Path.home() / ".cache" / "prolora")
    ray.init(num_cpus=max(args.learners), include_dashboard=False, log_to_driver=False)
    rows: list[dict] = []
    for n, sharded in [(n, s) for n in args.learners for s in (False, True) if not s or (args.shard_base and n > 1)]:
        rows.append(measure(n, model, args.sequences, args.length, args.steps, args.overrides, sharded))
        _report(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    ray.shutdown()
    return 0


def _report(rows: list[dict]) -> None:
    """Print the newest row, with its efficiency against the N=1 row when there is one."""
    r, base = rows[-1], next((r for r in rows if r["learners"] == 1), None)
    n = r["learners"]
    r["efficiency"] = r["tokens_per_s"] / (n * base["tokens_per_s"]) if base else None
    efficiency = f", efficiency {r['efficiency']:.2f}" if base else ""
    sharded = f" base sharded (each rank holds {max(r['base_share_per_rank']):.0%} of it)" if r["shard_base"] else ""
    gathers = " (with the base's all-gathers)" if r["shard_base"] else ""
    print(
        f"N={n}{sharded}: {r['tokens_per_s']:.0f} tokens/s ({r['step_s']:.2f} s/step){efficiency}; per rank and "
        f"step: compute{gathers} {', '.join(f'{s:.2f}' for s in r['compute_s_per_step'])} s, "
        f"all-reduce {', '.join(f'{s:.3f}' for s in r['allreduce_s_per_step'])} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
