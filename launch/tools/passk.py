"""`prolora eval`: a pass@k table for the base model and trained adapters, sampled through vLLM.

A run that trains weights in place (lora.mode=full, or DoRA) saves the trained tensors instead of adapters; each is
pushed into the engines in place (as during training) and evaluated like an adapter.

This is ProRL's test of what RL did: if pass@1 rises while pass@k at large k stays flat, training sharpened the
distribution onto problems the base model could already solve; if pass@k at large k rises too, it expanded what
the model solves. Every model is scored on the same prompts with the same n samples per prompt, seeds and
prompt formatting as the training rollouts (rollout workers, BOS included), and pass@k is the unbiased estimator
1 - C(n-c, k) / C(n, k) averaged over prompts (shared.metrics.pass_at_k).

Counting and estimating are separate: `count_correct` samples and counts correct completions per prompt, and
`pass_at_k_table` turns those counts into the table, so the table can be checked by hand from known counts.
A run on the user's own rows (task.heldout_file / train_file / dataset) is evaluated on those rows, with the task's
`is_correct` against their `answer` column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from rollout.fleet import RolloutFleet
from shared.chat import PromptRenderer
from shared.config import Config, load_config
from shared.errors import UserError
from shared.metrics import pass_at_k
from shared.records import AdapterPayload, Payload, SamplingSpec, WeightsPayload, is_saved_update, is_weights_dir
from shared.tasks import Task, correct_counts, get_task

"""What a peft adapter directory must hold to be hot-loaded (the learner exports the same two files)."""


@dataclass(frozen=True)
class EvalRequest:
    config: Config
    """The run's config (model, task, sampling), with --set overrides applied."""
    adapters: tuple[tuple[str, Path], ...]
    """(label, adapter directory) to compare against the base model, in table order."""
    ks: tuple[int, ...]
    n: int
    """Samples per prompt (>= max k)."""
    split: str
    n_prompts: int
    out: Path

    @classmethod
    def from_args(
        cls,
        target: str,
        k: str,
        n: int | None,
        split: str,
        prompts: int | None,
        adapters: str,
        out: str | None,
        overrides: list[str],
    ) -> EvalRequest:
        ks = parse_ks(k)
        n = max(ks) if n is None else n
        if n < max(ks):
            raise UserError(f"--n {n} is smaller than the largest k ({max(ks)}); pass@k needs n >= k samples")
        config_path, found, out_dir = find_adapters(Path(target), adapters)
        config = load_config(config_path, overrides)
        return cls(
            config,
            tuple(found),
            ks,
            n,
            split,
            prompts or config.eval.size,
            Path(out) if out else out_dir / f"eval_{split}.json",
        )


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise UserError(f"--k expects comma-separated integers like 1,8,64, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise UserError(f"--k values must be >= 1, got {text!r}")
    return ks


def find_adapters(target: Path, names: str) -> tuple[Path | None, list[tuple[str, Path]], Path]:
    """(run config file or None, [(label, adapter dir)], default output directory) for a run or adapter dir."""
    if is_saved_update(target):
        run_dir = target.parent.parent  # <run>/adapters/<name>
        config = run_dir / "config.yaml"
        return (config if config.is_file() else None), [(target.name, target)], target.parent
    if not (target / "config.yaml").is_file():
        raise UserError(
            f"{target} is neither a run directory (config.yaml) nor an adapter (adapter_config.json) or trained "
            f"weights ({WeightsPayload.FILE})"
        )
    adapters = target / "adapters"
    if names == "all":
        chosen = sorted(p.name for p in adapters.glob("step_*")) + ["final"]
    else:
        chosen = [n.strip() for n in names.split(",") if n.strip()]
    if chosen == ["final"] and not (adapters / "final").is_dir() and (adapters / "latest").is_dir():
        chosen = ["latest"]  # a run still going (or stopped early) has no final adapter yet
    missing = [n for n in chosen if not is_saved_update(adapters / n)]
    if missing:
        have = sorted(p.name for p in adapters.iterdir()) if adapters.is_dir() else []
        raise UserError(f"no adapter {', '.join(missing)} under {adapters}; there are: {have}")
    return target / "config.yaml", [(n, adapters / n) for n in chosen], target


def read_payload(path: Path, version: int) -> Payload:
    """A saved adapter, or a weight-push run's saved weights, as what the engines load."""
    return WeightsPayload.read(path, version) if is_weights_dir(path) else AdapterPayload.read(path, version)


def pass_at_k_table(counts: dict[str, list[int]], n: int, ks: tuple[int, ...]) -> dict[str, dict[int, float]]:
    """{model: {k: mean over prompts of pass@k}} from each model's per-prompt correct counts out of n samples."""
    return {
        model: {k: sum(pass_at_k(n, c, k) for c in correct) / len(correct) for k in ks}
        for model, correct in counts.items()
    }


def count_correct(
    fleet: RolloutFleet, task: Task, rows: list[dict], sampling: SamplingSpec, version: int, renderer: PromptRenderer
) -> list[int]:
    """Correct completions per prompt out of sampling.n, generated with adapter `version` (0 = base model)."""
    groups = fleet.generate([renderer.render(r["prompt"]) for r in rows], sampling, version)
    return correct_counts(task, groups, rows)


def run_eval(request: EvalRequest) -> dict:
    """Sample every model, print the table and write it as JSON; returns the JSON document."""
    import ray

    from launch.actors import start_ray, start_rollout_workers
    from launch.datafiles import checked_rows, own_sources
    from launch.rundir import resolve_model_path

    config = request.config
    task = get_task(config.task.name)
    model_path = resolve_model_path(config.model.path)
    renderer = PromptRenderer.from_config(config, model_path)
    own = own_sources(config)[1 if request.split == "heldout" else 0]
    if own:  # the run's own rows; is_correct needs their `answer` column
        rows = checked_rows(config, own, renderer.count_tokens, non_null=["answer"])[0][: request.n_prompts]
    else:
        builtin = task.heldout_rows if request.split == "heldout" else task.train_rows
        rows = builtin(request.n_prompts, config.run.seed)
    sampling = SamplingSpec(
        n=request.n,
        max_tokens=config.rollout.max_new_tokens,
        temperature=config.eval.temperature,
        seed=config.run.seed,
        stop=tuple(config.rollout.stop),
    )
    payloads = [read_payload(path, i + 1) for i, (_, path) in enumerate(request.adapters)]
    start_ray(config, request.out.parent)  # engine and Ray output to logs/ beside the table, unless log.verbose
    fleet = RolloutFleet(start_rollout_workers(config, model_path), config.rollout.max_restarts)
    counts = {"base": count_correct(fleet, task, rows, sampling, 0, renderer)}
    for (label, _), payload in zip(request.adapters, payloads, strict=True):
        fleet.publish(ray.put(payload))  # one adapter at a time: the fleet keeps only the newest loaded
        counts[label] = count_correct(fleet, task, rows, sampling, payload.version, renderer)
    document = _document(request, counts)
    print(format_table(document))
    request.out.parent.mkdir(parents=True, exist_ok=True)
    request.out.write_text(json.dumps(document, indent=1))
    print(f"written: {request.out}")
    return document


def _document(request: EvalRequest, counts: dict[str, list[int]]) -> dict:
    table = pass_at_k_table(counts, request.n, request.ks)
    paths = {"base": None} | {label: str(path.resolve()) for label, path in request.adapters}
    return {
        "split": request.split,
        "task": request.config.task.name,
        "model": request.config.model.path,
        "n": request.n,
        "n_prompts": request.n_prompts,
        "k": list(request.ks),
        "temperature": request.config.eval.temperature,
        "max_tokens": request.config.rollout.max_new_tokens,
        "rows": [
            {
                "model": model,
                "adapter": paths[model],
                "pass_at_k": {str(k): v for k, v in table[model].items()},
                "correct_counts": counts[model],
            }
            for model in counts
        ],
    }


def format_table(document: dict) -> str:
    ks = document["k"]
    width = max(12, *(len(r["model"]) for r in document["rows"]))
    lines = [
        f"pass@k on {document['split']} ({document['n_prompts']} prompts, n={document['n']} samples each, "
        f"temperature {document['temperature']:g})",
        f"{'model':<{width}}" + "".join(f"{'pass@' + str(k):>10}" for k in ks),
    ]
    for row in document["rows"]:
        lines.append(f"{row['model']:<{width}}" + "".join(f"{row['pass_at_k'][str(k)]:>10.3f}" for k in ks))
    return "\n".join(lines)
