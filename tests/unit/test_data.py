"""Prompt order, retirement and the per-prompt pass-rate history (launch/prompts.py)."""

from __future__ import annotations

import pytest

from launch.prompts import PassRateHistory, PromptFeed, PromptSampler, solved_streak
from shared.errors import UserError

ROWS = [{"prompt": f"p{i}", "answer": str(i)} for i in range(5)]


def test_sampler_is_reproducible_and_covers_every_row_per_epoch():
    a, b = PromptSampler(ROWS, seed=1), PromptSampler(ROWS, seed=1)
    first = [r["prompt"] for r in a.next_batch(5)]
    assert first == [r["prompt"] for r in b.next_batch(5)]
    assert sorted(first) == [f"p{i}" for i in range(5)]
    assert a.state() == {"epoch": 0, "index": 5, "retired": []}


def test_sampler_state_round_trip_continues_the_same_sequence():
    straight = PromptSampler(ROWS, seed=3)
    straight.retire(["p2"])
    straight.next_batch(7)
    saved = straight.state()
    resumed = PromptSampler(ROWS, seed=3)
    resumed.load_state(saved)
    assert [r["prompt"] for r in resumed.next_batch(9)] == [r["prompt"] for r in straight.next_batch(9)]


def test_retired_prompts_are_never_sampled_again():
    sampler = PromptSampler(ROWS, seed=0)
    sampler.retire(["p1", "p3"])
    seen = [r["prompt"] for r in sampler.next_batch(30)]
    assert set(seen) == {"p0", "p2", "p4"}
    assert seen.count("p0") == 10  # each epoch still yields every live prompt once


def test_retiring_every_prompt_is_an_error():
    sampler = PromptSampler(ROWS, seed=0)
    sampler.retire(["p0", "p1", "p2", "p3"])
    with pytest.raises(UserError, match="all 5 training prompts are retired"):
        sampler.retire(["p4"])


@pytest.mark.parametrize(
    ("rates", "k", "want"),
    [
        ([1.0, 1.0], 2, True),
        ([1.0], 2, False),  # not enough visits yet
        ([1.0, 0.875, 1.0], 2, False),
        ([0.5, 1.0, 1.0, 1.0], 3, True),
        ([1.0, 1.0], 0, False),  # 0 never retires
    ],
)
def test_solved_streak(rates, k, want):
    assert solved_streak(rates, k) is want


def test_history_records_rates_and_retires_once():
    history = PassRateHistory(retire_after=2)
    visits = [
        history.observe(1, "a", samples=8, passes=8),
        history.observe(1, "b", samples=8, passes=3),
        history.observe(2, "a", samples=8, passes=8),
        history.observe(3, "b", samples=0, passes=0),  # every sample skipped: no rate recorded
        history.observe(4, "a", samples=8, passes=8),
    ]
    assert history.rates == {"a": [1.0, 1.0, 1.0], "b": [0.375]}
    assert [v.retired for v in visits] == [False, False, True, False, False]
    assert visits[1].step == 1 and visits[1].passes == 3 and visits[1].samples == 8


def _drain(feed: PromptFeed, step: int) -> list[str]:
    return [r["prompt"] for r in feed.begin(step).next_batch(2)]


def test_feed_defers_retirement_by_k_steps():
    for k in (0, 2):
        feed = PromptFeed(PromptSampler(ROWS, seed=0), max_staleness=k)
        sampler = PromptSampler(ROWS, seed=0)
        first = _drain(feed, 1)
        sampler.next_batch(2)
        feed.retire_after(1, [first[0]])
        for step in range(2, 2 + k):  # batches already due before the retirement applies still may hold it
            assert _drain(feed, step) == [r["prompt"] for r in sampler.next_batch(2)]
        sampler.retire([first[0]])
        for step in range(2 + k, 8):
            batch = _drain(feed, step)
            assert first[0] not in batch
            assert batch == [r["prompt"] for r in sampler.next_batch(2)]


def test_feed_checkpoint_resumes_the_order_of_batches_drawn_ahead():
    """Checkpoint after step 2 while batches 3 and 4 are already drawn (k = 2): a resumed feed draws 3, 4, ...
    exactly as the uninterrupted one, retirements included."""
    straight = PromptFeed(PromptSampler(ROWS, seed=5), max_staleness=2)
    batches = {s: _drain(straight, s) for s in (1, 2, 3)}
    straight.retire_after(1, [batches[1][0]])
    batches[4] = _drain(straight, 4)  # step 2 not trained yet, so step 1's retirement is not in force
    straight.retire_after(2, [batches[2][1]])
    saved = straight.state(2)
    later = {s: _drain(straight, s) for s in (5, 6, 7)}

    resumed = PromptFeed(PromptSampler(ROWS, seed=5), max_staleness=2)
    resumed.load_state(saved)
    assert [_drain(resumed, s) for s in (3, 4)] == [batches[3], batches[4]]
    assert {s: _drain(resumed, s) for s in (5, 6, 7)} == later
    assert batches[1][0] not in later[5] + later[6] + later[7]


def test_feed_checkpoint_before_the_next_batch_is_drawn_keeps_pending_retirements():
    straight = PromptFeed(PromptSampler(ROWS, seed=2), max_staleness=0)
    first = _drain(straight, 1)
    straight.retire_after(1, [first[0]])
    saved = straight.state(1)
    assert saved["pending_retirements"] == [[2, [first[0]]]]
    resumed = PromptFeed(PromptSampler(ROWS, seed=2), max_staleness=0)
    resumed.load_state(saved)
    assert [_drain(resumed, s) for s in (2, 3, 4)] == [_drain(straight, s) for s in (2, 3, 4)]
