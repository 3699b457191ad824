"""`python -m launch.tools.make_pairs`: DPO preference pairs from the base model's own samples.

For each training prompt of the config's task (the built-in rows, or the run's own rows with an `answer`), the
engines sample `--samples` completions from the base model (no adapter) at the rollout temperature, and the task's
`is_correct` (the check behind pass@k and the exact-match reward) splits them into right and wrong. A prompt with at
least one of each gives one pair: the first right completion is `chosen`, the first wrong one `rejected`; prompts the
model always or never solves give none. Each output row keeps the prompt as the data had it (a string or messages),
so a DPO run renders it through the same chat path, and its `answer`, so a GRPO run can train on the same file.

    python -m launch.tools.make_pairs [CONFIG] [--set key=value ...] --out pairs.jsonl [--prompts 256] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from shared.records import SamplingSpec


def pick_pair(texts: Sequence[str], answer: str, is_correct: Callable[[str, str], bool]) -> tuple[str, str] | None:
    """(first correct, first incorrect) completion text, or None when the samples are all right or all wrong."""
    right = [t for t in texts if is_correct(t, answer)]
    wrong = [t for t in texts if not is_correct(t, answer)]
    return (right[0], wrong[0]) if right and wrong else None


def make_pairs(config: Any, n_prompts: int, n_samples: int) -> tuple[list[dict], int]:
    """(pair rows, prompts sampled): starts Ray and the engines of `config`, samples the base model, shuts Ray down."""
    import ray

    from launch.actors import start_ray, start_rollout_workers
    from launch.datafiles import checked_rows, own_sources
    from launch.rundir import resolve_model_path
    from rollout.fleet import RolloutFleet
    from shared.chat import PromptRenderer
    from shared.tasks import get_task

    task = get_task(config.task.name)
    model_path = resolve_model_path(config.model.path)
    renderer = PromptRenderer.from_config(config, model_path)
    own = own_sources(config)[0]
    if own:
        rows = checked_rows(config, own, renderer.count_tokens, non_null=["answer"])[0][:n_prompts]
    else:
        rows = task.train_rows(n_prompts, config.run.seed)
    sampling = SamplingSpec(
        n=n_samples,
        max_tokens=config.rollout.max_new_tokens,
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        seed=config.run.seed,
        stop=tuple(config.rollout.stop),
    )
    start_ray(config)
    try:
        fleet = RolloutFleet(start_rollout_workers(config, model_path), config.rollout.max_restarts)
        groups = fleet.generate([renderer.render(r["prompt"]) for r in rows], sampling, 0)
    finally:
        ray.shutdown()
    pairs = []
    for row, group in zip(rows, groups, strict=True):
        pair = pick_pair([c.text for c in group.completions], row["answer"], task.is_correct)
        if pair:
            pairs.append({"prompt": row["prompt"], "chosen": pair[0], "rejected": pair[1], "answer": row["answer"]})
    return pairs, len(rows)


def write_pairs(pairs: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m launch.tools.make_pairs", description=__doc__.split("\n")[0])
    p.add_argument("config", nargs="?", help="config file or preset (default: the built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", required=True, help="JSONL file to write (prompt, chosen, rejected, answer)")
    p.add_argument("--prompts", type=int, default=256, help="training prompts to sample")
    p.add_argument("--samples", type=int, default=8, help="base-model samples per prompt")
    return p


def main(argv: list[str] | None = None) -> None:
    from launch.cli import resolve_config
    from shared.config import load_config

    args = parser().parse_args(argv)
    config = load_config(resolve_config(args.config) if args.config else None, args.overrides)
    pairs, sampled = make_pairs(config, args.prompts, args.samples)
    write_pairs(pairs, Path(args.out))
    print(f"{len(pairs)} pairs from {sampled} prompts ({args.samples} base-model samples each): {args.out}")


if __name__ == "__main__":
    main()
