"""How a step's inputs are shared out over ranks, and each rank's rollout seed (no process group needed)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from neuromas.diagnostics import UserError  # noqa: E402
from neuromas.runtime.training.distributed import DataParallel, current, rank_seed  # noqa: E402
from neuromas.runtime.training.loop import check_batch_for_ranks  # noqa: E402


@pytest.mark.parametrize(("count", "world"), [(3, 2), (8, 4), (5, 3), (7, 1), (2, 2)])
def test_shares_are_contiguous_balanced_and_cover_every_input_once(count, world):
    shares = [DataParallel(rank, world, device=None).shard(count) for rank in range(world)]
    assert [i for share in shares for i in share] == list(range(count))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_rank_zero_keeps_the_single_process_seed_and_other_ranks_differ():
    assert rank_seed(1234, 0) == 1234
    seeds = {rank_seed(1234, rank) for rank in range(8)}
    assert len(seeds) == 8 and rank_seed(1234, 3) == rank_seed(1234, 3)


def test_a_single_process_never_joins_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert current() is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert current() is None


def test_a_batch_smaller_than_the_world_is_refused_with_the_fix():
    check_batch_for_ranks(2, 2)
    with pytest.raises(UserError, match="batch of 1 input.*shared by 2 processes.*--batch 2 or more"):
        check_batch_for_ranks(1, 2)
