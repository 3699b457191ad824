"""`prolora inspect RUN_DIR`: where the run's updates move the base model, per layer and module.

Reads the run's saved adapters (adapters/step_*, then final, or latest while the run goes on; `--adapter NAME`
picks others) and the base model named by the run's config.yaml (`model.path`, `builtin:<task>` included), one base
weight at a time from its safetensors files. A run that trains weights in place (lora.mode=full, or DoRA) saves
the trained modules' weights W' (weights.safetensors) instead of an adapter: their update is W' - W. The measures
are learner/update_map.py's: the update's size against the base weight, its effective rank, and the fraction of
entries a bfloat16 merge changes; and, along the chain base -> first adapter -> ... -> last, the fraction of entries
two consecutive bfloat16 merges share. Prints the last adapter's layer x module tables and one line per adapter,
and writes everything to OUT/update_map.json.

`--pick-top F` also picks a subnetwork to train from this (pilot) run: the fraction F of the last adapter's modules
with the largest update relative to their weight (relative_norm), written as a config fragment to OUT/subnetwork.yaml
(`lora.mode: full` with those modules' full paths as `lora.target_modules`), for `prolora train CONFIG` to merge
with `--set` or to copy into a config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file

from learner.update_map import (
    Checkpoint,
    DenseWeight,
    ModuleUpdate,
    UpdateMap,
    adapter_factors,
    map_checkpoints,
    overall,
)
from shared.config import load_config
from shared.errors import UserError
from shared.records import WeightsPayload, is_saved_update, is_weights_dir

MEASURES = {
    "relative_norm": "||Δ||_F / ||W||_F with Δ = s·B·A (an adapter) or W' - W (weights trained in place)",
    "effective_rank": "exp of the entropy of the update's singular values normalised to sum 1 (Roy & Vetterli)",
    "bf16_changed": "fraction of W's entries with bf16(W + Δ) != bf16(W)",
    "unchanged": "fraction of entries equal in the bf16 merges of two consecutive checkpoints (the first is the base)",
}


class BaseWeights(Mapping[str, torch.Tensor]):
    """A Hugging Face model directory's safetensors weights, each read from disk when asked for."""

    def __init__(self, model_dir: Path) -> None:
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = json.loads(index.read_text())["weight_map"]
            self._file = {name: model_dir / file for name, file in files.items()}
        elif (model_dir / "model.safetensors").is_file():
            with safe_open(model_dir / "model.safetensors", "pt") as f:
                self._file = {name: model_dir / "model.safetensors" for name in f.keys()}  # noqa: SIM118
        else:
            raise UserError(f"{model_dir} holds no safetensors weights (model.safetensors or its index)")

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._file:
            raise UserError(f"the base model has no weight {name!r}: was the adapter trained on another model?")
        with safe_open(self._file[name], "pt") as f:
            return f.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file)

    def __len__(self) -> int:
        return len(self._file)

    def parameter_count(self) -> int:
        total = 0
        for path in set(self._file.values()):
            with safe_open(path, "pt") as f:
                for name in f.keys():  # noqa: SIM118
                    shape = f.get_slice(name).get_shape()
                    total += int(torch.Size(shape).numel())
        return total


@dataclass(frozen=True)
class Inspection:
    run_dir: Path
    base_model: str
    parameters: int
    adapters: list[tuple[str, Path, int | None]]
    """(name, directory, VERSION) of each adapter, in chain order."""
    result: UpdateMap


def chosen_adapters(run_dir: Path, names: list[str] | None) -> list[tuple[str, Path, int | None]]:
    """The named adapters, or by default every step_* copy then final (latest when there is no final), with the
    final left out when it is the same version as the last step copy."""
    adapters = run_dir / "adapters"
    if names:
        missing = [n for n in names if not is_saved_update(adapters / n)]
        if missing:
            have = sorted(p.name for p in adapters.iterdir()) if adapters.is_dir() else []
            raise UserError(f"no adapter {', '.join(missing)} under {adapters}; there are: {have}")
        return [(n, adapters / n, _version(adapters / n)) for n in names]
    found = [(p.name, p, _version(p)) for p in sorted(adapters.glob("step_*")) if is_saved_update(p)]
    last = next((adapters / n for n in ("final", "latest") if is_saved_update(adapters / n)), None)
    if last is not None and not (found and found[-1][2] is not None and found[-1][2] == _version(last)):
        found.append((last.name, last, _version(last)))
    if not found:
        raise UserError(f"{run_dir} has no saved adapters (looked for adapters/step_*, final and latest)")
    return found


def _version(path: Path) -> int | None:
    file = path / "VERSION"
    return int(file.read_text()) if file.is_file() else None


def read_checkpoint(name: str, path: Path) -> Checkpoint:
    """An adapter directory's factors at peft's scale (alpha / r, or alpha / sqrt(r) with rsLoRA), or a weights
    directory's trained tensors."""
    if is_weights_dir(path):
        tensors = load_file(path / WeightsPayload.FILE)
        return Checkpoint(name, {n.removesuffix(".weight"): DenseWeight(t) for n, t in tensors.items()})
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("use_dora"):
        raise UserError(f"{path}: a DoRA adapter; its update is not s·B·A (a DoRA run's weights.safetensors is read)")
    if config.get("alpha_pattern"):
        raise UserError(f"{path}: adapter_config.json sets alpha_pattern, which inspect does not read")
    if config.get("fan_in_fan_out"):
        raise UserError(f"{path}: adapter_config.json sets fan_in_fan_out, which inspect does not read")
    weights = load_file(path / "adapter_model.safetensors")
    return Checkpoint(name, adapter_factors(weights, float(config["lora_alpha"]), bool(config.get("use_rslora"))))


def inspect_run(run_dir: Path, names: list[str] | None = None) -> Inspection:
    """The update map of a run directory's adapters over its base model (chain: base, then the adapters)."""
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml)")
    adapters = chosen_adapters(run_dir, names)
    from launch.rundir import resolve_model_path

    model_path = load_config(config_file).model.path
    base = BaseWeights(Path(resolve_model_path(model_path)))
    checkpoints = [Checkpoint("base", {}), *(read_checkpoint(n, p) for n, p, _ in adapters)]
    return Inspection(run_dir, model_path, base.parameter_count(), adapters, map_checkpoints(base, checkpoints))


def to_json(inspection: Inspection) -> dict:
    result = inspection.result
    targeted = {c.after: c.entries for c in result.unchanged}
    untouched = {name: inspection.parameters - entries for name, entries in targeted.items()}
    return {
        "run_dir": str(inspection.run_dir.resolve()),
        "base_model": inspection.base_model,
        "parameters": inspection.parameters,
        "measures": MEASURES,
        "checkpoints": [
            {
                "name": name,
                "version": version,
                "adapter": str(path.resolve()),
                "overall": overall(result.checkpoints[name]),
                "modules": [asdict(row) for row in result.checkpoints[name]],
            }
            for name, path, version in inspection.adapters
        ],
        "unchanged": [
            {
                "before": u.before,
                "after": u.after,
                "fraction": u.fraction,
                "of_all_parameters": (u.unchanged_entries + untouched[u.after]) / inspection.parameters,
                "per_module": u.per_module,
            }
            for u in result.unchanged
        ],
    }


def module_titles(rows: list[ModuleUpdate]) -> dict[str, str]:
    """Column titles: the last part of each module path when that is unambiguous (q_proj), else the full path."""
    modules = list(dict.fromkeys(r.module for r in rows))
    short = [m.rsplit(".", 1)[-1] for m in modules]
    return dict(zip(modules, short if len(set(short)) == len(short) else modules, strict=True))


def layer_table(rows: list[ModuleUpdate], measure: str, fmt: str) -> list[str]:
    """One measure as text: a row per layer, a column per module."""
    titles = module_titles(rows)
    cells = {(r.layer, r.module): format(getattr(r, measure), fmt) for r in rows}
    layers = sorted({r.layer for r in rows}, key=lambda x: -1 if x is None else x)
    width = max(9, *(len(t) + 1 for t in titles.values()))
    lines = ["layer " + "".join(f"{t:>{width}}" for t in titles.values())]
    for layer in layers:
        label = "-" if layer is None else str(layer)
        lines.append(f"{label:>5} " + "".join(f"{cells.get((layer, m), ''):>{width}}" for m in titles))
    return lines


def summary_lines(data: dict) -> list[str]:
    unchanged = {u["after"]: u for u in data["unchanged"]}
    lines = [f"{'adapter':<14}{'version':>8}{'rel_norm':>11}{'bf16_chg':>10}{'eff_rank':>10}{'unchanged':>11}"]
    for c in data["checkpoints"]:
        o, u = c["overall"], unchanged[c["name"]]
        version = "-" if c["version"] is None else str(c["version"])
        lines.append(
            f"{c['name']:<14}{version:>8}{o['relative_norm']:>11.3e}{o['bf16_changed']:>10.4f}"
            f"{o['effective_rank']:>10.2f}{u['fraction']:>11.4f}  (vs {u['before']})"
        )
    return lines


def pick_top(rows: list[ModuleUpdate], fraction: float) -> list[str]:
    """The module paths of the `fraction` of `rows` (at least one) with the largest relative_norm, in model order."""
    if not 0 < fraction <= 1:
        raise UserError(f"--pick-top takes a fraction of the modules in (0, 1], got {fraction}")
    count = max(1, round(fraction * len(rows)))
    top = {r.name for r in sorted(rows, key=lambda r: -r.relative_norm)[:count]}
    return [r.name for r in rows if r.name in top]


def subnetwork_fragment(modules: list[str]) -> dict:
    """The config fragment that trains `modules` full rank."""
    return {"lora": {"mode": "full", "target_modules": modules}}


def run_inspect(run_dir: Path, names: list[str] | None, out_dir: Path | None, top: float | None = None) -> Path:
    """Print the tables and write OUT/update_map.json (default OUT: the run directory); returns the JSON path."""
    inspection = inspect_run(run_dir, names)
    data = to_json(inspection)
    last = inspection.adapters[-1][0]
    rows = inspection.result.checkpoints[last]
    print(f"base model {inspection.base_model} ({inspection.parameters:,} parameters); last adapter: {last}")
    for measure, fmt in (("relative_norm", ".3e"), ("effective_rank", ".2f"), ("bf16_changed", ".4f")):
        print(f"\n{measure}: {MEASURES[measure]}")
        print("\n".join(layer_table(rows, measure, fmt)))
    print(f"\nper adapter (unchanged: {MEASURES['unchanged']})")
    print("\n".join(summary_lines(data)))
    out_dir = out_dir or run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "update_map.json"
    path.write_text(json.dumps(data, indent=1))
    print(f"\nupdate map: {path}")
    if top is not None:
        picked = pick_top(rows, top)
        entries = sum(r.entries for r in rows if r.name in picked)
        fragment = out_dir / "subnetwork.yaml"
        fragment.write_text(yaml.safe_dump(subnetwork_fragment(picked), sort_keys=False))
        print(f"subnetwork: {len(picked)} of {len(rows)} modules, {entries:,} weights (top {top:g} by relative_norm)")
        print(f"  {fragment} (lora.mode=full, lora.target_modules={picked})")
    return path
