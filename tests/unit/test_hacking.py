"""The reward-hacking detector as pure logic over step records: it fires on the record series of a run whose reward
pays for length (and on each other signature's series), and stays quiet on a healthy run's series."""

from __future__ import annotations

import random

import pytest

from shared.config import HackingConfig
from shared.hacking import SIGNATURES, HackingWatch, detect, halves_rise, relative_growth

CONFIG = HackingConfig(window=10)


def _step(step: int, **values) -> dict:
    base = {
        "step": step,
        "reward_mean": 0.5,
        "reward_std": 0.2,
        "response_len_mean": 20.0,
        "repetition_frac": 0.0,
        "entropy": 1.0,
        "reward/exact_match": 0.5,
    }
    return {**base, **values}


def healthy(n: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Reward and held-out improve together, length drifts a little with noise, entropy declines slowly."""
    rng = random.Random(seed)
    steps = [
        _step(
            s,
            reward_mean=0.3 + 0.01 * s + rng.gauss(0, 0.02),
            response_len_mean=20 + 0.05 * s + rng.gauss(0, 0.5),
            repetition_frac=max(0.0, rng.gauss(0.02, 0.01)),
            entropy=1.0 - 0.005 * s + rng.gauss(0, 0.02),
        )
        for s in range(1, n + 1)
    ]
    evals = [{"eval": True, "step": s, "pass@1": 0.3 + 0.008 * s} for s in range(0, n + 1, 10)]
    return steps, evals


def length_paying(n: int = 40) -> list[dict]:
    """A reward of sqrt(tokens): every completion grows, the reward follows with diminishing returns."""
    lengths = [8 * 1.05**s for s in range(1, n + 1)]
    return [_step(s, response_len_mean=L, reward_mean=L**0.5 / 10) for s, L in enumerate(lengths, 1)]


def _fired_steps(steps: list[dict], evals: list[dict], config: HackingConfig = CONFIG) -> dict[str, list[int]]:
    watch, fired = HackingWatch(config), {name: [] for name in SIGNATURES}
    evals_left = list(evals)
    for record in steps:
        while evals_left and evals_left[0]["step"] < record["step"]:
            watch.observe_eval(evals_left.pop(0))
        for name in watch.after_step(record).fired:
            fired[name].append(record["step"])
    return fired


def test_quiet_on_a_healthy_run():
    for seed in range(5):
        steps, evals = healthy(seed=seed)
        assert _fired_steps(steps, evals) == {name: [] for name in SIGNATURES}, seed


def test_fires_on_a_reward_that_pays_for_length():
    fired = _fired_steps(length_paying(), [])
    assert fired["length"] and fired["length"][0] == CONFIG.window  # from the first step with a full window
    assert all(not v for k, v in fired.items() if k != "length")
    signals = detect(length_paying(), [], CONFIG)
    assert signals.length_growth > signals.reward_growth + CONFIG.length_margin
    # Linear pay for length keeps pace with length: by this definition that alone is not "faster than reward".
    linear = [_step(s, response_len_mean=8 * 1.05**s, reward_mean=0.08 * 1.05**s) for s in range(1, 41)]
    assert not _fired_steps(linear, [])["length"]


def test_nothing_fires_before_a_full_window():
    assert detect(length_paying(9), [], CONFIG).fired == ()
    assert detect(length_paying(9), [], CONFIG).length_growth is None


def test_heldout_falls_while_reward_rises():
    steps = [_step(s, reward_mean=0.2 + 0.02 * s) for s in range(1, 31)]
    falling = [{"step": 0, "pass@1": 0.5}, {"step": 10, "pass@1": 0.5}, {"step": 20, "pass@1": 0.4}]
    fired = _fired_steps(steps, falling)["heldout"]
    assert fired == list(range(21, 31))  # after the evaluation that fell, until the next one
    rising = [{"step": 0, "pass@1": 0.5}, {"step": 10, "pass@1": 0.5}, {"step": 20, "pass@1": 0.51}]
    assert not _fired_steps(steps, rising)["heldout"]
    # A negative margin asks held-out to keep up: +0.01 is less than the +0.05 required.
    lagging = HackingConfig(window=10, heldout_margin=-0.05)
    assert _fired_steps(steps, rising, lagging)["heldout"] == list(range(21, 31))


def test_repetition_rising():
    steps = [_step(s, repetition_frac=0.0 if s <= 25 else 0.4) for s in range(1, 31)]
    # Step 26: one step of 0.4 in a newer half of five is a rise of 0.08, below 0.1; from step 27 it is 0.16.
    assert _fired_steps(steps, [])["repetition"] == list(range(27, 31))


def test_reward_model_rises_while_verifiable_falls():
    steps = [
        _step(s, **{"reward/reward_model": 0.1 * s, "reward/exact_match": max(0.0, 0.6 - 0.02 * s)})
        for s in range(1, 31)
    ]
    fired = _fired_steps(steps, [])
    assert fired["reward_model"] == list(range(10, 31))
    agreeing = [_step(s, **{"reward/reward_model": 0.1 * s, "reward/exact_match": 0.02 * s}) for s in range(1, 31)]
    assert not _fired_steps(agreeing, [])["reward_model"]


def test_entropy_collapse():
    steps = [_step(s, entropy=1.0 if s <= 10 else 0.05) for s in range(1, 31)]
    fired = _fired_steps(steps, [])["entropy"]
    assert fired and fired[0] == 15 and fired[-1] == 30  # once the newer half is mostly collapsed


def test_each_signature_can_be_turned_off():
    off = HackingConfig(window=10, length_growth=None)
    assert not _fired_steps(length_paying(), [], off)["length"]


def test_halves():
    assert halves_rise([1.0, None, 3.0, 5.0]) == (1.0, 4.0)
    assert relative_growth([2.0, 2.0, 3.0, 3.0]) == pytest.approx(0.5)
    assert relative_growth([0.0, 0.0, 1.0, 1.0]) is None
