"""`python -m launch.tools.bench_learner`: the learner's peak memory per trained token and tokens per second.

A learner's memory must not grow with the batch beyond one micro-batch, even with a real vocabulary, where logits
are 600 KB per position in float32. This measures one `Learner.train_step` on a tiny random-weight model with Qwen2's
shapes and its 151,936-token vocabulary, for each batch size asked, each in a fresh subprocess (a process's peak
resident memory only grows, so sizes measured in one process would hide each other). It prints, per batch: the
process's peak RSS, its growth during the step (the step's own memory: activations, logits, temporaries), that
growth per trained token, and tokens (prompt + completion) per second of the step, also per CPU-second of the
process (user + system: a figure that holds on a machine shared with other work, where wall time does not).

    python -m launch.tools.bench_learner --sequences 8 16 64 --length 256 [--set train.micro_batch_tokens=4096]

The model is built on first use under ~/.cache/prolora (no download).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 151_936
"""Qwen2's vocabulary: the size that makes full logits the learner's largest tensor."""
PROMPT_TOKENS = 32
"""Prompt tokens per sequence; the rest of --length is completion (the tokens the loss trains on)."""


def bench_model(cache: Path) -> Path:
    """A ~10M-parameter random Qwen2 (two layers, hidden 64, head_dim 32) with the real vocabulary, tied head."""
    path = cache / f"bench-learner-qwen2-v{VOCAB}"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,  # head_dim 32: hidden_size / heads
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    Qwen2ForCausalLM(config).save_pretrained(tmp)
    tmp.rename(path)
    return path


def _max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(model: Path, sequences: int, length: int, overrides: list[str]) -> dict:
    """One train_step on `sequences` rows of `length` tokens in this process; its memory and speed."""
    import torch

    from learner.learner import Learner
    from shared.config import load_config
    from shared.records import TrainBatch, TrainSample

    config = load_config(overrides=overrides)
    completion = length - PROMPT_TOKENS
    learner = Learner(
        str(model),
        lora=config.lora,
        train=config.train,
        algo=config.algo,
        temperature=1.0,
        max_new_tokens=completion,
        dtype=config.model.dtype,
    )
    g = torch.Generator().manual_seed(0)
    samples = tuple(
        TrainSample(
            tuple(torch.randint(0, VOCAB, (PROMPT_TOKENS,), generator=g).tolist()),
            tuple(torch.randint(0, VOCAB, (completion,), generator=g).tolist()),
            (-12.0,) * completion,
            advantage=1.0 if i % 2 else -1.0,
            adapter_version=0,
        )
        for i in range(sequences)
    )
    before, cpu_before = _max_rss_bytes(), _cpu_s()
    start = time.perf_counter()
    stats = learner.train_step(TrainBatch(samples, step=1))
    seconds = time.perf_counter() - start
    cpu_s = _cpu_s() - cpu_before
    peak = _max_rss_bytes()
    tokens = sequences * length
    return {
        "sequences": sequences,
        "length": length,
        "tokens": tokens,
        "peak_rss_gb": peak / 1e9,
        "step_growth_gb": (peak - before) / 1e9,
        "growth_kb_per_token": (peak - before) / tokens / 1e3,
        "peak_mb_per_token": peak / tokens / 1e6,
        "tokens_per_s": tokens / seconds,
        "step_s": seconds,
        "cpu_s": cpu_s,
        "tokens_per_cpu_s": tokens / cpu_s,
        "optimizer_steps": stats.optimizer_steps,
        "device": learner.device(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence, prompt included")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model = bench_model(Path.home() / ".cache" / "prolora")
    if args.child:
        print(json.dumps(measure(model, args.sequences[0], args.length, args.overrides)))
        return 0
    rows = []
    for n in args.sequences:
        sets = [x for o in args.overrides for x in ("--set", o)]
        cmd = [sys.executable, "-m", "launch.tools.bench_learner", "--child", "--sequences", str(n)]
        out = subprocess.run(
            [*cmd, "--length", str(args.length), *sets], check=True, capture_output=True, text=True
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        r = rows[-1]
        print(
            f"{n:4d} x {args.length} tokens: peak RSS {r['peak_rss_gb']:.2f} GB, step growth {r['step_growth_gb']:.3f} "
            f"GB ({r['growth_kb_per_token']:.1f} KB/token), {r['tokens_per_s']:.0f} tokens/s "
            f"({r['tokens_per_cpu_s']:.0f} per CPU-second) on {r['device']}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
