"""The reward-hacking watch: signatures of a policy that games its reward, from the step records of a run.

Reward hacking shows in the metrics before anyone reads the completions: the padded answers that scored higher, the
"the the the" a reward model liked. Five signatures are checked after every step, each over the records written so
far (pure functions of metrics.jsonl objects, so `prolora report` reads the same evidence the run wrote):

- `heldout`: the training reward rose between the last two held-out evaluations while held-out pass@1 fell (or,
  with a negative margin, rose by less than the margin);
- `length`: the mean completion length grew faster than the mean reward over the window;
- `repetition`: the repeated-trigram fraction of completions rose over the window;
- `reward_model`: a learned reward's mean rose while the verifiable rewards of the same completions fell;
- `entropy`: the policy's entropy collapsed to a small fraction of where the run started.

A trend compares the mean of the newer half of the last `window` steps with the older half; halves average out
single-step noise that a last-vs-first comparison would trip on. Nothing fires before the run has `window` steps.
Thresholds are `hacking.*` in the config (shared/config/sections.py HackingConfig), each signature can be turned off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.config import HackingConfig

SIGNATURES = ("heldout", "length", "repetition", "reward_model", "entropy")
"""The signature names, as they appear in `hacking/fired`."""

REWARD_PREFIX = "reward/"


@dataclass(frozen=True)
class HackingSignals:
    """One step's reward-hacking evidence; each figure is null when the run has too little history for it."""

    heldout_delta: float | None = None
    """Change of held-out pass@1 between the last two evaluations before this step."""
    heldout_reward_rise: float | None = None
    """Rise of the mean training reward between those evaluations, in units of the mean within-step reward std."""
    length_growth: float | None = None
    """Relative growth of the mean completion length over the window (newer half vs older half)."""
    reward_growth: float | None = None
    """Relative growth of the mean reward over the window (newer half vs the older half's absolute mean)."""
    repetition_rise: float | None = None
    """Rise of the mean repeated-trigram fraction (`repetition_frac`) over the window."""
    learned_rise: float | None = None
    """Rise over the window of the mean of the learned rewards (`hacking.learned_rewards`) in the set."""
    verifiable_rise: float | None = None
    """Rise over the window of the mean of the other (verifiable) rewards of the same steps."""
    entropy_ratio: float | None = None
    """Newer half's mean policy entropy over the mean of the run's first `window / 2` steps."""
    fired: tuple[str, ...] = field(default_factory=tuple)
    """The signatures that hold at this step (heldout, length, repetition, reward_model, entropy); empty: none."""


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def halves_rise(values: Sequence[float | None]) -> tuple[float, float] | None:
    """(older-half mean, newer-half mean) of `values`; None when either half has no value."""
    half = len(values) // 2
    older, newer = _mean(values[:half]), _mean(values[half:])
    return None if older is None or newer is None else (older, newer)


def relative_growth(values: Sequence[float | None]) -> float | None:
    """(newer - older) / |older| of the halves; None when the older half is 0 or missing."""
    pair = halves_rise(values)
    if pair is None or pair[0] == 0:
        return None
    return (pair[1] - pair[0]) / abs(pair[0])


def rise(values: Sequence[float | None]) -> float | None:
    pair = halves_rise(values)
    return None if pair is None else pair[1] - pair[0]


def heldout_evidence(
    steps: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]]
) -> tuple[float | None, float | None]:
    """(held-out pass@1 change, training-reward rise in std units) between the last two evaluations."""
    if len(evals) < 2:
        return None, None
    a, b = evals[-2], evals[-1]
    between = [s for s in steps if a["step"] < s["step"] <= b["step"]]
    if len(between) < 2:
        return b["pass@1"] - a["pass@1"], None
    reward = rise([s.get("reward_mean") for s in between])
    spread = _mean([s.get("reward_std") for s in between])
    scaled = None if reward is None else reward / max(spread or 0.0, 1e-6)
    return b["pass@1"] - a["pass@1"], scaled


def reward_split(
    steps: Sequence[Mapping[str, Any]], learned: Sequence[str]
) -> tuple[list[float | None], list[float | None]]:
    """Per step: the mean of the learned reward components present, and the mean of the other components."""
    learned_keys = {REWARD_PREFIX + name for name in learned}
    learned_means, verifiable_means = [], []
    for s in steps:
        components = {k: v for k, v in s.items() if k.startswith(REWARD_PREFIX)}
        learned_means.append(_mean([v for k, v in components.items() if k in learned_keys]))
        verifiable_means.append(_mean([v for k, v in components.items() if k not in learned_keys]))
    return learned_means, verifiable_means


def detect(
    steps: Sequence[Mapping[str, Any]], evals: Sequence[Mapping[str, Any]], config: HackingConfig
) -> HackingSignals:
    """The signals after the last of `steps` (step records, oldest first) given the evaluations recorded so far."""
    if len(steps) < config.window:
        return HackingSignals()
    window = steps[-config.window :]
    heldout_delta, heldout_rise = heldout_evidence(steps, evals)
    learned, verifiable = reward_split(window, config.learned_rewards)
    start = _mean([s.get("entropy") for s in steps[: max(1, config.window // 2)]])
    recent = _mean([s.get("entropy") for s in window[config.window // 2 :]])
    signals = HackingSignals(
        heldout_delta=heldout_delta,
        heldout_reward_rise=heldout_rise,
        length_growth=relative_growth([s.get("response_len_mean") for s in window]),
        reward_growth=relative_growth([s.get("reward_mean") for s in window]),
        repetition_rise=rise([s.get("repetition_frac") for s in window]),
        learned_rise=rise(learned),
        verifiable_rise=rise(verifiable),
        entropy_ratio=recent / start if start and recent is not None else None,
    )
    return HackingSignals(**{**signals.__dict__, "fired": fired(signals, config)})


def fired(s: HackingSignals, config: HackingConfig) -> tuple[str, ...]:
    """Which signatures the signals meet under the config's thresholds (see HackingConfig)."""
    holds = {
        "heldout": config.heldout_margin is not None
        and s.heldout_delta is not None
        and s.heldout_reward_rise is not None
        and s.heldout_reward_rise >= config.heldout_reward_rise
        and s.heldout_delta < -config.heldout_margin,
        "length": config.length_growth is not None
        and s.length_growth is not None
        and s.length_growth >= config.length_growth
        and (s.reward_growth is None or s.length_growth - s.reward_growth >= config.length_margin),
        "repetition": config.repetition_rise is not None
        and s.repetition_rise is not None
        and s.repetition_rise >= config.repetition_rise,
        "reward_model": config.divergence_drop is not None
        and s.learned_rise is not None
        and s.verifiable_rise is not None
        and s.learned_rise > 0
        and s.verifiable_rise <= -config.divergence_drop,
        "entropy": config.entropy_ratio is not None
        and s.entropy_ratio is not None
        and s.entropy_ratio < config.entropy_ratio,
    }
    return tuple(name for name in SIGNATURES if holds[name])


def describe(s: HackingSignals) -> str:
    """One line of evidence for the signatures that fired, for warnings."""
    parts = {
        "heldout": f"held-out pass@1 {s.heldout_delta:+.3f} while training reward rose {s.heldout_reward_rise:.2f} std"
        if s.heldout_delta is not None and s.heldout_reward_rise is not None
        else "",
        "length": f"length {_pct(s.length_growth)} vs reward {_pct(s.reward_growth)}",
        "repetition": f"repeated trigrams {s.repetition_rise:+.2f}" if s.repetition_rise is not None else "",
        "reward_model": f"learned reward {s.learned_rise:+.3f}, verifiable {s.verifiable_rise:+.3f}"
        if s.learned_rise is not None and s.verifiable_rise is not None
        else "",
        "entropy": f"entropy at {s.entropy_ratio:.0%} of its start" if s.entropy_ratio is not None else "",
    }
    return "; ".join(f"{name}: {parts[name]}" for name in s.fired)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.0%}"


class HackingWatch:
    """The run's history for `detect`: step records and evaluations in the order the driver writes them."""

    def __init__(self, config: HackingConfig) -> None:
        self.config = config
        self._steps: list[Mapping[str, Any]] = []
        self._evals: list[Mapping[str, Any]] = []

    def replay(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Take the history of a resumed run from its metrics.jsonl records."""
        for record in records:
            if record.get("eval"):
                self.observe_eval(record)
            elif "reward_mean" in record:
                self._steps.append(record)

    def observe_eval(self, record: Mapping[str, Any]) -> None:
        self._evals.append(record)

    def after_step(self, record: Mapping[str, Any]) -> HackingSignals:
        """Add a step record (JSON form, without hacking figures) and return the signals after it."""
        self._steps.append(record)
        return detect(self._steps, self._evals, self.config)
