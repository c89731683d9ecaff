"""torch.distributed pieces on gloo/loopback with 2 and 3 CPU processes."""
import pytest
import torch

from skipkern import distributed as sd
from tests.dist_utils import run_ranks


def _collectives(rank, world):
    g = sd.resolve_group("default")
    total = sd.all_reduce_sum(torch.tensor([float(rank + 1)], dtype=torch.float64), g)
    sd.check_same(123, "parameter count", g)
    return {"sum": total.item(), "counts": sd.check_nonempty(rank + 1, "data", g), "main": sd.is_main(),
            "shard": sd.shard_indices(10, g, seed=0).tolist()}


@pytest.mark.parametrize("world", [2, 3])
def test_collectives(world):
    out = run_ranks(_collectives, world)
    assert all(o["sum"] == world * (world + 1) / 2 for o in out)
    assert out[0]["counts"] == list(range(1, world + 1))
    assert [o["main"] for o in out] == [True] + [False] * (world - 1)
    shards = [o["shard"] for o in out]
    assert sorted(sum(shards, [])) == list(range(10))


def _mismatch(rank, world):
    sd.check_same(100 + rank, "parameter count", sd.resolve_group())


def _empty(rank, world):
    sd.check_nonempty(0 if rank == 1 else 5, "HessianOperator data", sd.resolve_group())


def test_errors_raise_on_every_rank():
    errs = run_ranks(_mismatch, 2, expect_error=True)
    assert all("disagree on parameter count" in e and "rank 1: 101" in e for e in errs)
    errs = run_ranks(_empty, 3, expect_error=True)
    assert all("rank(s) [1] hold an empty data shard" in e for e in errs)


def test_single_process_defaults():
    assert sd.resolve_group() is None and sd.is_main() and sd.world_size(None) == 1
    assert sd.gather_ints(4, None) == [4]
    with pytest.raises(ValueError, match="process_group"):
        sd.resolve_group("world")
