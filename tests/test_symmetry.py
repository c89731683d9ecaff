"""The binary-weight toy of the symmetry experiment: enumeration against a per-configuration reference,
counts known by hand, symmetry orbits, single-flip local minima on constructed losses, and the recipe."""
import math

import pytest
import torch

from skipkern.landscape.binary_toy import BinaryToy, class_size_histogram, class_size_stats


@pytest.mark.parametrize("skips", ["plain", "adjacent", "dense"])
@pytest.mark.parametrize("activation", ["sign", "relu", "tanh"])
def test_enumeration_matches_the_reference_forward(skips, activation):
    toy = BinaryToy(2, (2, 2), skips, activation)  # 4 + 4 + 2 = 10 weights
    out = toy.outputs()
    assert out.shape == (1024, 4)
    x = toy.inputs()
    for c in range(0, 1024, 37):
        assert torch.allclose(out[c], toy.forward(toy.weights(c), x), atol=1e-12)


def test_counts_known_by_hand():
    # d = 1, one hidden unit: plain o = w_out sign(w_1 x) = (w_out w_1) x: functions {x, -x}, 2 configs each;
    # adjacent: h = sign(w_1 x) + x = (w_1 + 1) x, o in {2x, -2x, 0, 0}: 3 functions, sizes 1, 1, 2
    plain = BinaryToy(1, (1,), "plain")
    inv, counts, table = plain.functions()
    assert sorted(counts.tolist()) == [2, 2] and sorted(table[:, 1].tolist()) == [-1.0, 1.0]
    adj = BinaryToy(1, (1,), "adjacent")
    inv, counts, table = adj.functions()
    assert sorted(counts.tolist()) == [1, 1, 2]
    assert class_size_histogram(counts) == {1: 2, 2: 1}
    s = class_size_stats(counts)
    assert s["functions"] == 3 and s["weighted_mean_class_size"] == pytest.approx((1 + 1 + 4) / 4)


def _permute_and_flip(toy, ws, perm, flip):
    """Permute the first hidden layer's units and flip the signs of some of them (incoming and outgoing)."""
    s = torch.tensor([-1.0 if f else 1.0 for f in flip], dtype=torch.float64)
    w1 = ws[0][perm] * s[:, None]
    w2 = ws[1][:, perm] * s[None, :]
    return [w1, w2] + ws[2:]


def test_plain_sign_net_is_invariant_under_its_symmetries_and_skips_break_them():
    x = None
    changed = {"plain": 0, "adjacent": 0}
    for skips in changed:
        toy = BinaryToy(2, (2, 2), skips, "sign")
        x = toy.inputs()
        for c in range(0, 1024, 7):
            ws = toy.weights(c)
            other = _permute_and_flip(toy, ws, [1, 0], [True, False])
            changed[skips] += int(not torch.equal(toy.forward(ws, x), toy.forward(other, x)))
    assert changed["plain"] == 0 and changed["adjacent"] > 0


def test_local_minima_of_constructed_losses():
    toy = BinaryToy(2, (2,), "plain")  # 4 + 2 = 6 weights, 64 configurations
    c = torch.arange(64)
    target = 0b101100
    ham = torch.tensor([bin(int(v) ^ target).count("1") for v in c], dtype=torch.float64)
    lm = toy.local_minima(ham)  # Hamming distance: one minimum, every other point has a descending flip
    assert lm["weak"].sum() == 1 and lm["strict"][target] and lm["global"].sum() == 1
    flat = toy.local_minima(torch.zeros(64, dtype=torch.float64))
    assert flat["weak"].all() and not flat["strict"].any()
    two = ham.clone()
    two[0b010011] = 0.5  # the complement of target: 6 flips away, all neighbours higher
    lm2 = toy.local_minima(two)
    assert lm2["weak"].sum() == 2 and lm2["global"].sum() == 1


def test_losses_and_errors():
    o = torch.tensor([[3.0, -1.0, 0.0]])
    y = torch.tensor([1.0, 1.0, -1.0])
    assert BinaryToy.loss(o, y, "hinge").item() == pytest.approx((0 + 2 + 1) / 3)
    assert BinaryToy.loss(o, y, "zero_one").item() == pytest.approx(2 / 3)
    assert BinaryToy.loss(o, y, "mse").item() == pytest.approx((4 + 4 + 1) / 3)
    with pytest.raises(ValueError, match="skips"):
        BinaryToy(skips="residual")
    with pytest.raises(ValueError, match="2\\^24"):
        BinaryToy(4, (4, 4))
    assert math.log2(BinaryToy(3, (3, 3)).num_configs) == 21


@pytest.mark.parametrize("skips", ["plain", "adjacent", "dense"])
def test_labellings_of_one_orbit_share_one_landscape(skips):
    # the input cube's symmetries (and y -> -y) map every version onto itself when the widths equal d
    from skipkern.landscape.binary_toy import label_orbits
    toy = BinaryToy(2, (2, 2), skips, "sign")
    inv, _, table = toy.functions()
    orbits = label_orbits(2)
    assert [w for _, w in orbits] == [8, 4, 2] and sum(w for _, w in orbits) == 2 ** 4 - 2
    seen = {}
    for code in range(1, 15):
        y = torch.tensor([1.0 if (code >> i) & 1 else -1.0 for i in range(4)], dtype=torch.float64)
        lm = toy.local_minima(BinaryToy.loss(table, y)[inv])
        key = (int(lm["weak"].sum()), int(lm["global"].sum()), lm["min"])
        orbit = next(i for i, (r, _) in enumerate(orbits) if _same_orbit(r, y))
        assert seen.setdefault(orbit, key) == key


def _same_orbit(a, b):
    import itertools
    pts = list(itertools.product((-1, 1), repeat=2))
    idx = {p: i for i, p in enumerate(pts)}
    for perm in itertools.permutations(range(2)):
        for neg in itertools.product((-1, 1), repeat=2):
            img = torch.stack([b[idx[tuple(neg[k] * p[perm[k]] for k in range(2))]] for p in pts])
            if torch.equal(img, a) or torch.equal(-img, a):
                return True
    return False


@pytest.mark.slow
def test_tiny_recipe_writes_its_files(tmp_path):
    from skipkern.experiments.common import Context
    from skipkern.experiments.registry import get_recipe
    ctx = Context(out=tmp_path, mode="tiny", progress=False)
    res = get_recipe("symmetry").run(ctx)
    out = tmp_path / "symmetry"
    for f in ("results.json", "symmetry.csv", "symmetry_toy.csv", "symmetry_class_sizes.png",
              "symmetry_local_minima.png", "symmetry_deep.png"):
        assert (out / f).is_file(), f
    toy = [f for f in res["findings"] if f["result"] == "symmetry (binary toy)"][0]
    assert [o["key"] for o in toy["outcomes"]] == ["S1", "S2", "S3", "S4"]
    assert res["summary"]["toy"]["plain"]["functions"] == 13  # 2 inputs, widths (2, 2), sign units
