"""The bounded-staleness producer (launch/pipeline.py) with plain Python batches: order, gate, failures, stop."""

from __future__ import annotations

import threading
import time

import pytest

from launch.pipeline import Prefetcher, StalenessError, check_staleness, oldest_allowed_version


def _consume(prefetcher: Prefetcher, steps: range, done: list[int], pause: float = 0.02) -> list:
    """Train steps in order: take the batch, 'train' (sleep), mark the step done."""
    got = []
    for step in steps:
        got.append(prefetcher.get(step))
        time.sleep(pause)
        done[0] = step
        prefetcher.step_done(step)
    return got


@pytest.mark.parametrize("k", [1, 2])
def test_producer_runs_ahead_by_at_most_k_steps(k):
    done, made = [0], []  # made: (step, last completed step when its batch was started)

    def produce(step: int) -> int:
        made.append((step, done[0]))
        return step * 10

    with Prefetcher(produce, 1, 8, k) as prefetcher:
        got = _consume(prefetcher, range(1, 9), done)
    assert got == [s * 10 for s in range(1, 9)]
    assert [s for s, _ in made] == list(range(1, 9))
    assert all(completed >= oldest_allowed_version(step, k) for step, completed in made)
    assert max(step - 1 - completed for step, completed in made) == k  # it really ran k steps ahead


def test_k0_makes_each_batch_in_the_caller_on_demand():
    threads, done = [], [2]

    def produce(step: int) -> int:
        threads.append(threading.current_thread())
        assert done[0] == step - 1
        return step

    with Prefetcher(produce, 3, 5, 0) as prefetcher:
        assert _consume(prefetcher, range(3, 6), done, pause=0) == [3, 4, 5]
    assert threads == [threading.main_thread()] * 3


def test_batches_are_taken_in_step_order():
    with Prefetcher(lambda s: s, 1, 3, 1) as prefetcher:
        with pytest.raises(ValueError, match="expected step 1, got 2"):
            prefetcher.get(2)


def test_producer_failure_is_raised_at_its_step_after_earlier_batches():
    def produce(step: int) -> int:
        if step == 3:
            raise KeyError("engine gone")
        return step

    done = [0]
    with Prefetcher(produce, 1, 6, 2) as prefetcher:
        assert _consume(prefetcher, range(1, 3), done) == [1, 2]
        with pytest.raises(KeyError, match="engine gone"):
            prefetcher.get(3)
    assert not prefetcher._thread.is_alive()


def test_close_stops_a_producer_waiting_at_the_gate():
    made = []
    prefetcher = Prefetcher(made.append, 1, 100, 1)
    assert prefetcher.get(1) is None
    time.sleep(0.05)  # the producer makes step 2, then waits for step 1 to be done
    start = time.perf_counter()
    prefetcher.close()
    assert time.perf_counter() - start < 1.0
    assert not prefetcher._thread.is_alive()
    assert made == [1, 2]


def test_staleness_is_learner_version_minus_sample_version_within_bound():
    assert check_staleness(5, [4, 3, 2], max_staleness=2) == [0, 1, 2]
    assert check_staleness(1, [0, 0], max_staleness=0) == [0, 0]
    with pytest.raises(StalenessError, match=r"staleness \[3\]"):
        check_staleness(5, [4, 1], max_staleness=2)
    with pytest.raises(StalenessError):
        check_staleness(5, [5], max_staleness=2)  # a sample from a version not trained yet
