"""How a learner group splits a minibatch (learner/distributed.py): balanced shares, and with a sharded base the
same number of passes on every rank."""

from __future__ import annotations

from learner.distributed import plan, share
from learner.logprobs import micro_batches


def test_shares_cover_every_row_once_balanced_by_tokens():
    lengths = [9, 3, 7, 7, 2, 5, 1]
    shares = [share(lengths, 3, r) for r in range(3)]
    assert sorted(i for s in shares for i in s) == list(range(len(lengths)))
    loads = [sum(lengths[i] for i in s) for s in shares]
    assert max(loads) - min(loads) <= max(lengths)


def test_a_sharded_base_pads_each_rank_to_the_same_number_of_passes():
    lengths = [30, 30, 30, 4, 4]  # rank 0 gets rows 0, 2 (one pass: 2 x 30 <= 64), rank 1 rows 1, 3, 4 (two)
    free = [plan(lengths, 64, 2, r, lockstep=False) for r in range(2)]
    locked = [plan(lengths, 64, 2, r, lockstep=True) for r in range(2)]
    assert [len(p) for p in free] == [1, 2]
    assert [len(p) for p in locked] == [2, 2]
    assert locked[0] == [*free[0], []] and locked[1] == free[1]
    assert sorted(i for p in locked for m in p for i in m) == [0, 1, 2, 3, 4]
    one_row = [plan([5], 64, 2, r, lockstep=True) for r in range(2)]
    assert one_row == [[[0]], [[]]]  # a rank with no rows still makes the pass
    assert plan(lengths, 64, 1, 0, lockstep=True) == micro_batches(lengths, 64)
