"""torch.distributed pieces on gloo/loopback with 2 and 3 CPU processes."""
import pytest
import torch

from skipkern import distributed as sd
from tests.dist_utils import run_ranks

pytestmark = pytest.mark.slow  # each test launches processes


def _catch(fn, *args):
    try:
        fn(*args)
    except sd.DistributedError as e:
        return str(e)
    return None


def _collectives(rank, world):
    g = sd.resolve_group("default")
    total = sd.all_reduce_sum(torch.tensor([float(rank + 1)], dtype=torch.float64), g)
    sd.check_same(123, "parameter count", g)
    out = {"sum": total.item(), "counts": sd.check_nonempty(rank + 1, "data", g), "main": sd.is_main(),
           "shard": sd.shard(list(range(10)), g),
           "sums": sd.all_reduce_sums([rank, 0.5], g), "seed": sd.shared_seed(None, g),
           "obj": sd.broadcast_object({"r": rank}, g)}
    # every check raises on every rank (the group stays usable afterwards: each check completes its collectives)
    out["mismatch"] = _catch(sd.check_same, 100 + rank, "parameter count", g)
    out["empty"] = _catch(sd.check_nonempty, 0 if rank == 1 else 5, "HessianOperator data", g)
    out["not_ok"] = _catch(sd.check_ok, "disk full" if rank == world - 1 else None, "writing", g)

    def write():
        raise OSError("cannot write here")
    try:
        sd.run_on_main(write, g)
    except OSError as e:
        out["main_error"] = str(e)
    out["main_value"] = sd.run_on_main(lambda: 7 if rank == 0 else -1, g)
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_collectives_and_errors(world):
    out = run_ranks(_collectives, world)
    assert all(o["sum"] == world * (world + 1) / 2 for o in out)
    assert out[0]["counts"] == list(range(1, world + 1))
    assert [o["main"] for o in out] == [True] + [False] * (world - 1)
    shards = [o["shard"] for o in out]
    assert sorted(sum(shards, [])) == list(range(10))
    assert all(o["sums"] == [world * (world - 1) / 2, 0.5 * world] for o in out)
    assert len({o["seed"] for o in out}) == 1 and out[0]["seed"] is not None
    assert all(o["obj"] == {"r": 0} and o["main_value"] == 7 for o in out)
    assert all("disagree on parameter count" in o["mismatch"] and "rank 1: 101" in o["mismatch"] for o in out)
    assert all("rank(s) [1] hold an empty data shard" in o["empty"] for o in out)
    assert all(f"failed on rank(s) [{world - 1}]" in o["not_ok"] and "disk full" in o["not_ok"] for o in out)
    assert all(o["main_error"] == "cannot write here" for o in out)


def test_single_process_defaults():
    assert sd.resolve_group() is None and sd.is_main() and sd.world_size(None) == 1
    assert sd.gather_ints(4, None) == [4]
    assert sd.all_reduce_sums([1, 2.5], None) == [1.0, 2.5] and sd.shared_seed(None, None) is None
    assert sd.broadcast_object("x", None) == "x" and sd.run_on_main(lambda: 3, None) == 3
    sd.check_ok(None, "x", None)
    with pytest.raises(sd.DistributedError, match="writing: disk full"):
        sd.check_ok("disk full", "writing", None)
    with pytest.raises(ValueError, match="process_group"):
        sd.resolve_group("world")
