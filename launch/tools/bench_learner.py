"""`python -m launch.tools.bench_learner`: the learner's peak memory per trained token and tokens per second.

A learner's memory must not grow with the batch beyond one micro-batch, even with a real vocabulary, where logits
are 600 KB per position in float32. This measures one `Learner.train_step` on a tiny random-weight model with Qwen2's
shapes and its 151,936-token vocabulary, for each batch size asked, each in a fresh subprocess (a process's peak
resident memory only grows, so sizes measured in one process would hide each other). It prints, per batch: the
process's peak RSS, its growth during the step (the step's own memory: activations, logits, temporaries), that
growth per trained token, and tokens (prompt + completion) per second of the step, also per CPU-second of the
process (user + system: a figure that holds on a machine shared with other work, where wall time does not).

Beside each, TRL's GRPOTrainer does the learner's part of a step on the same batch (same model, LoRA, loss
aggregation, clip range; no KL term, as at TRL's beta 0; its own defaults otherwise, gradient checkpointing
included): its `compute_loss` (TRL's logprob and loss code) and backward on micro-batches of as many sequences as fit
`train.micro_batch_tokens`, with gradient accumulation, then one optimiser step. The ratios printed are prolora's
step growth per token over TRL's (lower is better) and prolora's tokens per second over TRL's (higher is better).

    python -m launch.tools.bench_learner --sequences 64 --length 512 [--set train.micro_batch_tokens=2048] [--no-trl]
    prolora bench --size learner      # the same, 64 x 512

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


LEARNER_SETS = ["algo.log_kl=false"]
"""No reference pass when the loss has no KL term, as TRL at beta 0: the same work on both sides."""


def _rows(sequences: int, length: int) -> list[tuple[list[int], list[int], float]]:
    """The batch both learners train on: (prompt ids, completion ids, advantage) per sequence."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [
        (
            torch.randint(0, VOCAB, (PROMPT_TOKENS,), generator=g).tolist(),
            torch.randint(0, VOCAB, (length - PROMPT_TOKENS,), generator=g).tolist(),
            1.0 if i % 2 else -1.0,
        )
        for i in range(sequences)
    ]


def _figures(sequences: int, length: int, before: int, seconds: float, cpu_s: float) -> dict:
    peak, tokens = _max_rss_bytes(), sequences * length
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
    }


def measure(model: Path, sequences: int, length: int, overrides: list[str]) -> dict:
    """One train_step on `sequences` rows of `length` tokens in this process; its memory and speed."""
    from learner.learner import Learner
    from shared.config import load_config
    from shared.records import TrainBatch, TrainSample

    config = load_config(overrides=[*LEARNER_SETS, *overrides])
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
    samples = tuple(
        TrainSample(tuple(p), tuple(c), (-12.0,) * completion, advantage=a, adapter_version=0)
        for p, c, a in _rows(sequences, length)
    )
    before, cpu_before = _max_rss_bytes(), _cpu_s()
    start = time.perf_counter()
    stats = learner.train_step(TrainBatch(samples, step=1))
    figures = _figures(sequences, length, before, time.perf_counter() - start, _cpu_s() - cpu_before)
    return {**figures, "optimizer_steps": stats.optimizer_steps, "device": learner.device()}


def _trl_trainer(model: Path, config, micro: int, accumulation: int):
    """TRL's GRPOTrainer on the bench model with the config's LoRA and loss settings (CPU, no generation)."""
    from datasets import Dataset
    from peft import LoraConfig
    from tokenizers import Tokenizer, models
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import GRPOConfig, GRPOTrainer

    from launch.tools.bench_trl import LOSS_TYPES

    # The bench model has no tokenizer; the trainer only needs one to exist (nothing is generated or decoded).
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
        pad_token="<pad>",
        eos_token="<eos>",
    )
    a, lora, out = config.algo, config.lora, Path.home() / ".cache" / "prolora" / "bench-learner-trl"
    args = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        num_generations=2,
        max_completion_length=1,
        learning_rate=config.train.lr,
        beta=0.0,
        epsilon=a.clip_low,
        epsilon_high=a.clip_high,
        loss_type=LOSS_TYPES[a.loss_agg],
        use_cpu=True,
        bf16=config.model.dtype == "bfloat16",
        report_to="none",
        save_strategy="no",
    )
    peft = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=lora.target_modules, task_type="CAUSAL_LM")
    dtype = getattr(__import__("torch"), config.model.dtype)

    def no_reward(completions: list, **_: object) -> list[float | None]:  # never called: nothing is generated
        return [0.0] * len(completions)

    return GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model, dtype=dtype),
        reward_funcs=no_reward,
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "x"}] * 2),
        processing_class=tokenizer,
        peft_config=peft,
    )


def measure_trl(model: Path, sequences: int, length: int, overrides: list[str]) -> dict:
    """TRL's learner work on the same batch in this process: compute_loss + backward per micro-batch (as many
    sequences as fit train.micro_batch_tokens), gradients accumulated, one optimiser step; its memory and speed."""
    import torch

    from shared.config import load_config

    config = load_config(overrides=[*LEARNER_SETS, *overrides])
    micro = max(1, min(sequences, config.train.micro_batch_tokens // length))
    accumulation = -(-sequences // micro)
    trainer = _trl_trainer(model, config, micro, accumulation)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = accumulation
    optimizer = trainer.create_optimizer()
    rows = _rows(sequences, length)
    completion_tokens = torch.tensor(float(sequences * (length - PROMPT_TOKENS)))
    before, cpu_before = _max_rss_bytes(), _cpu_s()
    start = time.perf_counter()
    for i in range(0, sequences, micro):
        chunk = rows[i : i + micro]
        prompt_ids = torch.tensor([p for p, _, _ in chunk])
        completion_ids = torch.tensor([c for _, c, _ in chunk])
        inputs = {
            "prompt_ids": prompt_ids,
            "prompt_mask": torch.ones_like(prompt_ids),
            "completion_ids": completion_ids,
            "completion_mask": torch.ones_like(completion_ids),
            "advantages": torch.tensor([adv for _, _, adv in chunk]),
            "num_items_in_batch": completion_tokens,
        }
        trainer.compute_loss(trainer.model, inputs).backward()
    torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    figures = _figures(sequences, length, before, time.perf_counter() - start, _cpu_s() - cpu_before)
    checkpointing = bool(trainer.args.gradient_checkpointing)
    return {**figures, "micro_batch_sequences": micro, "gradient_checkpointing": checkpointing}


def _child(model: Path, learner: str, sequences: int, length: int, overrides: list[str]) -> dict:
    """One measurement in a fresh subprocess (peak RSS only grows within a process)."""
    sets = [x for o in overrides for x in ("--set", o)]
    cmd = [sys.executable, "-m", "launch.tools.bench_learner", "--child", learner, "--sequences", str(sequences)]
    out = subprocess.run([*cmd, "--length", str(length), *sets], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def format_row(name: str, r: dict) -> str:
    return (
        f"{name:8}{r['sequences']:4d} x {r['length']} tokens: peak RSS {r['peak_rss_gb']:.2f} GB, step growth "
        f"{r['step_growth_gb']:.3f} GB ({r['growth_kb_per_token']:.1f} KB/token), {r['tokens_per_s']:.0f} tokens/s "
        f"({r['tokens_per_cpu_s']:.0f} per CPU-second)"
    )


def format_ratios(ours: dict, trl: dict) -> str:
    """prolora against TRL on the same batch: memory per token (lower is better), speed (higher is better)."""
    return (
        f"        prolora / TRL: step growth per token {ours['step_growth_gb'] / trl['step_growth_gb']:.2f}x, peak RSS "
        f"{ours['peak_rss_gb'] / trl['peak_rss_gb']:.2f}x (targets <= 1); tokens/s "
        f"{ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x, per CPU-second "
        f"{ours['tokens_per_cpu_s'] / trl['tokens_per_cpu_s']:.2f}x (targets >= 1); TRL micro-batch "
        f"{trl['micro_batch_sequences']} sequences, gradient checkpointing {trl['gradient_checkpointing']}"
    )


def run(sequences: list[int], length: int, overrides: list[str], trl: bool = True, out: str | None = None) -> list:
    """Measure prolora's learner (and TRL's) at each batch size, print them side by side; the rows."""
    model = bench_model(Path.home() / ".cache" / "prolora")
    rows = []
    for n in sequences:
        row = {"prolora": _child(model, "prolora", n, length, overrides)}
        print(format_row("prolora", row["prolora"]) + f" on {row['prolora']['device']}", flush=True)
        if trl:
            row["trl"] = _child(model, "trl", n, length, overrides)
            print(format_row("TRL", row["trl"]), flush=True)
            print(format_ratios(row["prolora"], row["trl"]), flush=True)
        rows.append(row)
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[64])
    parser.add_argument("--length", type=int, default=512, help="tokens per sequence, prompt included")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override key=value")
    parser.add_argument("--no-trl", action="store_true", help="measure prolora's learner only")
    parser.add_argument("--out", help="also write the figures as JSON here")
    parser.add_argument("--child", choices=["prolora", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model = bench_model(Path.home() / ".cache" / "prolora")
        measure_fn = measure if args.child == "prolora" else measure_trl
        print(json.dumps(measure_fn(model, args.sequences[0], args.length, args.overrides)))
        return 0
    run(args.sequences, args.length, args.overrides, trl=not args.no_trl, out=args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
