"""SkipLinear: one fused skip layer, y = act(W x + b) + S(x)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from skipkern.backends import BACKENDS
from skipkern.kernels.precision import check_precision
from skipkern.nn.init import degenerate_orthogonal, glorot_normal_, random_orthogonal
from skipkern.ops.skip_linear import skip_linear
from skipkern.reference import activation_code

SKIP_KINDS = ("identity", "orthogonal", "none", "degenerate")


class SkipLinear(nn.Module):
    """y = act(x W^T + b) + S(x), backed by ``skipkern.ops.skip_linear``.

    Args:
        in_features, out_features: widths. ``skip="identity"`` needs them equal.
        skip: "identity" (S(x) = x), "orthogonal" (S(x) = Q x, Q a fixed random (semi-)orthogonal
            [out, in] buffer), "degenerate" (Q with ``degenerate_fraction`` of its singular values
            zeroed) or "none".
        bias: learn a bias. activation: "relu", "identity", "tanh", "gelu".
        backend: forced backend for every call ("auto" resolves per call).
        precision: fp32 products, passed to every call: None / "auto", "ieee" or "tf32" (triton only; see
            ``skipkern.ops.skip_linear``).
        seed / generator: make Q and the Glorot-normal initial weights reproducible.

    Shapes: input [..., in_features] -> output [..., out_features].
    """

    def __init__(self, in_features: int, out_features: int, skip: str = "identity", bias: bool = True,
                 activation: str = "relu", degenerate_fraction: float = 0.5, backend: str = "auto",
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 device=None, dtype=None, precision: Optional[str] = None):
        super().__init__()
        self.precision = check_precision(precision)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if skip not in SKIP_KINDS:
            raise ValueError(f"skip must be one of {SKIP_KINDS}, got {skip!r}")
        activation_code(activation)  # the one vocabulary check: ValueError naming the activations
        if backend not in (None, "auto") and backend not in BACKENDS:
            raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")
        if not isinstance(bias, bool):
            raise TypeError(f"bias must be True or False, got {bias!r}")
        if (isinstance(degenerate_fraction, bool) or not isinstance(degenerate_fraction, (int, float))
                or not 0.0 <= degenerate_fraction <= 1.0):
            raise ValueError(f"degenerate_fraction must be a number in [0, 1], got {degenerate_fraction!r}")
        if skip == "identity" and in_features != out_features:
            raise ValueError(f"skip='identity' needs in_features == out_features, got {in_features} -> "
                             f"{out_features}; use skip='orthogonal' for a fixed rectangular skip")
        self.in_features, self.out_features = in_features, out_features
        self.skip, self.activation, self.backend = skip, activation, backend
        self.degenerate_fraction = degenerate_fraction
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_features, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(out_features, **factory)) if bias else None
        g = generator
        if g is None and seed is not None:
            g = torch.Generator().manual_seed(int(seed))
        dt = self.weight.dtype
        if skip == "orthogonal":
            q = random_orthogonal(out_features, in_features, generator=g, dtype=dt)
        elif skip == "degenerate":
            q = degenerate_orthogonal(out_features, in_features, degenerate_fraction, generator=g, dtype=dt)
        else:
            q = None
        self.register_buffer("skip_weight", None if q is None else q.to(self.weight.device))
        self.reset_parameters(g)

    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """Glorot-normal weights, zero biases (the paper's initialisation)."""
        glorot_normal_(self.weight, generator)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def skip_arg(self):
        """The ``skip`` argument passed to skip_linear: None, "identity" or the Q buffer."""
        if self.skip == "identity":
            return "identity"
        if self.skip in ("orthogonal", "degenerate"):
            return self.skip_weight
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return skip_linear(x, self.weight, self.bias, self.skip_arg, self.activation, self.backend, self.precision)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, skip={self.skip!r}, "
                f"activation={self.activation!r}, bias={self.bias is not None}, backend={self.backend!r}")
