"""A binary-weight network small enough to enumerate every configuration (after Orhan 2017, "Skip
Connections as Effective Symmetry-Breaking", arXiv:1701.09175 v1-v4).

Every weight is -1 or +1; there are no biases. Inputs are all 2^d points of {-1, +1}^d. With
h_0 = x and hidden widths w_1 .. w_L, for l = 1 .. L
    plain      h_l = act(W_l h_{l-1})
    adjacent   h_l = act(W_l h_{l-1}) + h_{l-1}                   (skip from the layer below)
    dense      h_l = act(W_l h_{l-1}) + sum_{k < l} h_k            (DenseNet-style: every lower layer)
and the output o = w_out . h_L (one unit). Skips are fixed identities and join layers of equal width
only (a lower layer of another width is not added). The output reads h_L only; in the dense version
h_L already carries every lower layer. Activations: "sign" (sign(0) = 0; odd, so the plain net has
both the permutation symmetry of each layer's units and the sign-flip symmetry of a unit's incoming
and outgoing weights, the rescaling symmetry of +-1 weights), "relu" (permutations only, plus dead
units) or "tanh" (outputs compared after rounding to ``decimals``).

A configuration is an integer c in [0, 2^B), B the number of weights; bit B - 1 - j of c is weight j
(+1 when set), weights ordered W_1 (row-major), W_2, ..., w_out: so c ^ (1 << j) flips one weight.
Everything is computed for all configurations at once in torch (float64, exact for sign and relu).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["BinaryToy", "SKIPS", "ACTIVATIONS", "LOSSES", "label_orbits", "class_size_stats", "class_size_histogram"]

SKIPS = ("plain", "adjacent", "dense")
ACTIVATIONS = ("sign", "relu", "tanh")
LOSSES = ("hinge", "zero_one", "mse")


def _signs(bits: int) -> torch.Tensor:
    """[2^bits, bits] of +-1: row c holds the bits of c, most significant first (+1 where set)."""
    c = torch.arange(2 ** bits, dtype=torch.int64)[:, None]
    shift = torch.arange(bits - 1, -1, -1, dtype=torch.int64)[None]
    return ((c >> shift) & 1).to(torch.float64) * 2 - 1


@dataclass
class BinaryToy:
    """The toy net of one version.

    Args:
        input_dim: d. widths: hidden widths (w_1, ..., w_L). skips: "plain", "adjacent" or "dense".
        activation: "sign", "relu" or "tanh". decimals: rounding before comparing tanh outputs.
    """

    input_dim: int = 3
    widths: Sequence[int] = (3, 3)
    skips: str = "plain"
    activation: str = "sign"
    decimals: int = 9

    def __post_init__(self) -> None:
        if self.skips not in SKIPS:
            raise ValueError(f"skips must be one of {SKIPS}, got {self.skips!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        self.widths = tuple(int(w) for w in self.widths)
        if int(self.input_dim) < 1 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"input_dim and every width must be >= 1, got {self.input_dim}, {self.widths}")
        if self.num_weights > 24:
            raise ValueError(f"{self.num_weights} weights = 2^{self.num_weights} configurations; at most 2^24 are "
                             f"enumerated (use fewer or narrower layers)")

    @property
    def layer_bits(self) -> list:
        dims = [int(self.input_dim)] + list(self.widths) + [1]
        return [a * b for a, b in zip(dims[:-1], dims[1:])]

    @property
    def num_weights(self) -> int:
        return int(sum(self.layer_bits))

    @property
    def num_configs(self) -> int:
        return 2 ** self.num_weights

    def inputs(self) -> torch.Tensor:
        """All 2^d inputs [X, d] in {-1, +1}."""
        return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=int(self.input_dim))), dtype=torch.float64)

    def _act(self, z: torch.Tensor) -> torch.Tensor:
        if self.activation == "sign":
            return torch.sign(z)
        if self.activation == "relu":
            return torch.relu(z)
        return torch.tanh(z)

    def weights(self, c: int) -> list:
        """The weight matrices of configuration c: [W_1 [w_1, d], ..., w_out [1, w_L]]."""
        if not 0 <= int(c) < self.num_configs:
            raise ValueError(f"configuration must lie in [0, 2^{self.num_weights}), got {c}")
        bits = _signs(self.num_weights)[int(c)] if self.num_weights <= 16 else torch.tensor(
            [1.0 if (int(c) >> (self.num_weights - 1 - j)) & 1 else -1.0 for j in range(self.num_weights)],
            dtype=torch.float64)
        dims = [int(self.input_dim)] + list(self.widths) + [1]
        out, k = [], 0
        for a, b in zip(dims[:-1], dims[1:]):
            out.append(bits[k:k + a * b].view(b, a))
            k += a * b
        return out

    def forward(self, weights: list, x: torch.Tensor) -> torch.Tensor:
        """Output [X] of one configuration given as its weight matrices (the reference for tests)."""
        hs = [x]
        for l, W in enumerate(weights[:-1], start=1):
            h = self._act(hs[-1] @ W.T)
            h = h + self._skip_sum(hs, h.shape[-1])
            hs.append(h)
        return (hs[-1] @ weights[-1].T)[:, 0]

    def _skip_sum(self, hs: list, width: int):
        if self.skips == "plain":
            return 0.0
        lower = hs[-1:] if self.skips == "adjacent" else hs
        return sum((h for h in lower if h.shape[-1] == width), start=torch.zeros(()))

    @torch.no_grad()
    def outputs(self) -> torch.Tensor:
        """Outputs [2^B, X] of every configuration on every input (float64), layer by layer: after layer
        l the leading index runs over the configurations of layers 1..l."""
        x = self.inputs()
        hs = [x[None]]  # each [N_l, X, w]
        dims = [int(self.input_dim)] + list(self.widths)
        for a, b in zip(dims[:-1], dims[1:]):
            W = _signs(a * b).view(-1, b, a)                           # [2^(a b), b, a]
            z = torch.einsum("nxa,mba->nmxb", hs[-1], W)               # [N, M, X, b]
            n, m = z.shape[:2]
            h = self._act(z).reshape(n * m, x.shape[0], b)
            skip = self._skip_sum(hs, b)
            if isinstance(skip, torch.Tensor) and skip.dim() == 3:  # repeat lower layers for the new bits
                h = h + skip.repeat_interleave(m, dim=0)
            hs = [t.repeat_interleave(m, dim=0) for t in hs] + [h]
        w_out = _signs(dims[-1])                                       # [2^w_L, w_L]
        o = torch.einsum("nxw,mw->nmx", hs[-1], w_out)
        return o.reshape(-1, x.shape[0])

    def functions(self, outputs: Optional[torch.Tensor] = None) -> tuple:
        """(inverse [2^B] function id of each configuration, counts [F] configurations per function,
        table [F, X] the distinct output vectors)."""
        o = self.outputs() if outputs is None else outputs
        key = torch.round(o * 10 ** self.decimals) if self.activation == "tanh" else o
        lo, hi = float(key.min()), float(key.max())
        base = int(hi - lo) + 1
        if base ** key.shape[1] < 2 ** 62:  # small integers: one int64 code per row, a 1-D unique (fast)
            powers = torch.tensor([base ** i for i in range(key.shape[1])], dtype=torch.int64)
            code = ((key - lo).to(torch.int64) * powers).sum(1)
            _, first, inverse, counts = _unique_first(code)
            table = o[first]
        else:
            table, inverse, counts = torch.unique(key, dim=0, return_inverse=True, return_counts=True)
            if self.activation == "tanh":
                table = table / 10 ** self.decimals
        return inverse, counts, table

    @staticmethod
    def loss(outputs: torch.Tensor, labels: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
        """Loss [N] of outputs [N, X] against labels [X] in {-1, +1}: "hinge" mean max(0, 1 - y o),
        "zero_one" mean [sign(o) != y] (o = 0 is an error), "mse" mean (o - y)^2."""
        if kind == "hinge":
            return torch.relu(1.0 - outputs * labels).mean(-1)
        if kind == "zero_one":
            return (torch.sign(outputs) != labels).to(torch.float64).mean(-1)
        if kind == "mse":
            return ((outputs - labels) ** 2).mean(-1)
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")

    def local_minima(self, losses: torch.Tensor, tol: float = 1e-12) -> dict:
        """Single-flip local minima of a loss over all configurations ([2^B]).

        Losses are first rounded to multiples of ``tol`` (equal after rounding = tied). Returns {"weak":
        [2^B] bool (no flip lowers the loss), "strict": (every flip raises it), "global": (tied with the
        minimum), "min": the minimum}."""
        if losses.shape != (self.num_configs,):
            raise ValueError(f"losses must be [2^{self.num_weights}], got {tuple(losses.shape)}")
        # losses within tol share one integer level, so the comparisons below are exact and cheap
        q = torch.round(losses / tol) if tol > 0 else losses
        _, level = torch.unique(q, return_inverse=True)
        level = level.to(torch.int32 if level.max() < 2 ** 31 else torch.int64)
        weak = torch.ones(self.num_configs, dtype=torch.bool)
        strict = torch.ones(self.num_configs, dtype=torch.bool)
        for j in range(self.num_weights):  # flipping bit j swaps the two halves of axis 1 of this view
            nb = level.view(-1, 2, 2 ** j).flip(1).reshape(-1)
            weak &= nb >= level
            strict &= nb > level
        lo = float(losses.min())
        return {"weak": weak, "strict": strict, "global": level == 0, "min": lo}


def label_orbits(input_dim: int) -> list:
    """All non-constant labellings y in {-1, +1}^(2^d) of the input cube, grouped into orbits under the
    cube's symmetries (permutations and sign flips of the inputs) and the flip y -> -y.

    For an odd activation and hidden widths equal to d, each of these maps a configuration to another
    of the same version computing the transformed function (W_l -> D P W_l P^T D, the skips commuting
    with D P), so all labellings of one orbit give the same landscape. Returns [(representative labels
    [X] float64, orbit size)], sizes summing to 2^(2^d) - 2."""
    d = int(input_dim)
    if not 1 <= d <= 4:
        raise ValueError(f"input_dim must be 1..4 for the orbit enumeration (2^(2^d) labellings), got {d}")
    pts = list(itertools.product((-1, 1), repeat=d))
    index = {p: i for i, p in enumerate(pts)}
    maps = []
    for perm in itertools.permutations(range(d)):
        for neg in itertools.product((-1, 1), repeat=d):
            maps.append([index[tuple(neg[k] * p[perm[k]] for k in range(d))] for p in pts])
    seen, out = set(), []
    for code in range(1, 2 ** len(pts) - 1):
        y = tuple(1 if (code >> i) & 1 else -1 for i in range(len(pts)))
        if y in seen:
            continue
        orbit = set()
        for mp in maps:
            img = tuple(y[mp[i]] for i in range(len(pts)))
            orbit.add(img)
            orbit.add(tuple(-v for v in img))
        seen |= orbit
        out.append((torch.tensor(min(orbit), dtype=torch.float64), len(orbit)))
    return out


def _unique_first(code: torch.Tensor) -> tuple:
    """torch.unique of a 1-D tensor plus the index of each value's first occurrence."""
    vals, inverse, counts = torch.unique(code, return_inverse=True, return_counts=True)
    first = torch.full((vals.numel(),), code.numel(), dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(code.numel(), dtype=torch.int64), reduce="amin")
    return vals, first, inverse, counts


def class_size_stats(counts: torch.Tensor) -> dict:
    """Summary of the class sizes (configurations per distinct function)."""
    c = counts.to(torch.float64)
    n = float(c.sum())
    return {"functions": int(c.numel()), "configurations": int(n), "mean_class_size": n / c.numel(),
            "weighted_mean_class_size": float((c * c).sum() / n), "max_class_size": int(c.max()),
            "singleton_functions": int((c == 1).sum()), "singleton_config_fraction": float((c == 1).sum()) / n,
            "log2_functions": math.log2(c.numel()), "log2_weighted_class_size": math.log2(float((c * c).sum() / n))}


def class_size_histogram(counts: torch.Tensor) -> dict:
    """{class size: number of functions with that many configurations}."""
    sizes, freq = np.unique(counts.cpu().numpy(), return_counts=True)
    return {int(s): int(f) for s, f in zip(sizes, freq)}
