"""`python -m launch.tools.bench_quant`: the learner's memory with its base unquantized, int8 and nf4.

For each `model.quantization` asked, in a fresh subprocess (a process's peak resident memory only grows): build the
`Learner` (LoRA on all linear layers), measure its frozen base weights from the tensors it holds (codes plus scales
when quantized; `Learner.memory`), then run one `train_step` and report how much the process's resident memory
grew from before the learner was built to after the step (weights, adapter, optimizer state, what the step keeps;
freed memory handed back to the OS first),
its peak resident memory and the step time. The peak includes loading: transformers reads the float weights before
quantizing them, so a quantized load peaks above the size it settles to.

    python -m launch.tools.bench_quant [--model DIR] [--kinds none int8 nf4] [--sequences 8] [--length 128]

The default model is a random-weight Llama whose linear layers hold most of its weights (hidden 1024, 4 layers, a
512-token vocabulary), built on first use under ~/.cache/prolora; `--model` takes any Hugging Face model directory.
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

PROMPT_TOKENS = 16


def bench_model(cache: Path) -> Path:
    """A ~52M-parameter random Llama, 96% of it in linear layers."""
    path = cache / "bench-quant-llama-h1024-l4"
    if (path / "config.json").is_file():
        return path
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=128,
    )
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    LlamaForCausalLM(config).save_pretrained(tmp)
    tmp.rename(path)
    return path


def _rss_bytes() -> int:
    """Resident bytes, anonymous and file-backed: an unquantized base's weights stay mapped from the checkpoint
    file, so they count as file-backed pages once read."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(model: Path, kind: str, sequences: int, length: int, overrides: list[str]) -> dict:
    """Load a learner on `model` with its base quantized as `kind`, then one train_step: memory and time."""
    import torch

    from learner.learner import Learner
    from learner.quantized import return_freed_memory
    from shared.config import load_config
    from shared.records import TrainBatch, TrainSample

    config = load_config(overrides=[*overrides, f"model.quantization={kind}"])
    start_rss = _rss_bytes()
    learner = Learner(
        str(model),
        lora=config.lora,
        train=config.train,
        algo=config.algo,
        temperature=1.0,
        max_new_tokens=length - PROMPT_TOKENS,
        dtype=config.model.dtype,
        quantization=kind,  # type: ignore[arg-type]  # checked by load_config
    )
    vocab = learner.model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    completion = length - PROMPT_TOKENS
    samples = tuple(
        TrainSample(
            tuple(torch.randint(0, vocab, (PROMPT_TOKENS,), generator=g).tolist()),
            tuple(torch.randint(0, vocab, (completion,), generator=g).tolist()),
            (-6.0,) * completion,
            advantage=1.0 if i % 2 else -1.0,
            adapter_version=0,
        )
        for i in range(sequences)
    )
    start = time.perf_counter()
    learner.train_step(TrainBatch(samples, step=1))
    seconds = time.perf_counter() - start
    return_freed_memory()  # count what the learner holds, not what the allocator keeps for reuse
    return {
        "quantization": kind,
        **learner.memory(),
        "rss_before_bytes": start_rss,
        "rss_after_step_bytes": _rss_bytes(),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "step_s": seconds,
        "tokens": sequences * length,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a Hugging Face model directory (default: the bench model)")
    parser.add_argument("--kinds", nargs="+", default=["none", "int8", "nf4"], choices=["none", "int8", "nf4"])
    parser.add_argument("--sequences", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence, prompt included")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    model = Path(args.model) if args.model else bench_model(Path.home() / ".cache" / "prolora")
    if args.child:
        print(json.dumps(measure(model, args.child, args.sequences, args.length, args.overrides)))
        return 0
    rows = []
    print(f"{model}: one train_step of {args.sequences} x {args.length} tokens, LoRA on all linear layers")
    print(f"{'base':<6}{'base MB':>10}{'linear MB':>11}{'RSS growth MB':>15}{'peak RSS MB':>13}{'step s':>8}")
    for kind in args.kinds:
        sets = [x for o in args.overrides for x in ("--set", o)]
        cmd = [sys.executable, "-m", "launch.tools.bench_quant", "--child", kind, "--model", str(model)]
        cmd += ["--sequences", str(args.sequences), "--length", str(args.length), *sets]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
        r = rows[-1]
        print(
            f"{kind:<6}{r['base_bytes'] / 1e6:>10.1f}{r['linear_bytes'] / 1e6:>11.1f}"
            f"{(r['rss_after_step_bytes'] - r['rss_before_bytes']) / 1e6:>15.0f}"
            f"{r['peak_rss_bytes'] / 1e6:>13.0f}{r['step_s']:>8.1f}",
            flush=True,
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
