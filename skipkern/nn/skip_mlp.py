"""SkipMLP: the paper's deep fully-connected nets (plain, residual, orthogonal, degenerate,
hyper-residual), built from SkipLinear layers.

Layout, with ``depth`` hidden layers of ``width`` units:
    h_1 = act(W_0 x + b_0)                                      input layer, no skip (widths differ)
    h_{j+1} = act(W_j h_j + b_j) + S_j(h_j) [+ hyper_j]         j = 1 .. depth-1 (square layers)
    logits = W_out h_depth + b_out                              linear output layer
S_j is none (plain), identity (residual, hyper_residual), a fixed orthogonal Q_j (orthogonal) or a
degenerate Q_j (degenerate). The hyper-residual term (docs/paper.md; the form is not published) is
    hyper_j = c_j * sum_{k<j} P_k h_k,   c_j = 1/(j-1) ("mean") or 1 ("sum"),
P_k fixed random orthogonal ("orthogonal") or the identity ("identity"), one per source layer k.
Optional BatchNorm1d after chosen hidden layers (``batchnorm_layers``, 0-based hidden indices), for the
BiasReg + BN study.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from skipkern.nn.fused_mlp import fused_forward
from skipkern.nn.init import INITS, glorot_std, hyper_scale, random_orthogonal, scaled_stds
from skipkern.kernels.precision import check_precision
from skipkern.nn.skip_linear import SkipLinear
from skipkern.ops.skip_mlp import check_fused

ARCHS = ("plain", "residual", "orthogonal", "degenerate", "hyper_residual")
_ARCH_SKIP = {"plain": "none", "residual": "identity", "orthogonal": "orthogonal",
              "degenerate": "degenerate", "hyper_residual": "identity"}


class SkipMLP(nn.Module):
    """Deep skip MLP of the paper. Input [B, in_features] -> logits [B, out_features].

    Args:
        in_features, width, depth, out_features: sizes; ``depth`` >= 1 hidden layers in total,
            the first of which maps in_features -> width.
        arch: "plain", "residual", "orthogonal", "degenerate" or "hyper_residual".
        activation: hidden activation ("relu" in the paper).
        degenerate_fraction: fraction of zeroed singular values of the degenerate skips.
        hyper_reduce: "mean" (1/(j-1) sum, default) or "sum" for the hyper-residual term.
        hyper_skip: "orthogonal" (default) or "identity" for the hyper-residual matrices P_k.
        batchnorm_layers: hidden-layer indices (0-based) followed by a BatchNorm1d.
        bias: learn biases. backend: forced backend of every layer.
        seed: makes weights and fixed skip matrices reproducible.
        init: "glorot" (default; the paper's scheme: Glorot-normal weights, zero biases) or "scaled"
            (scale-controlled: every architecture starts with hidden mean squares of the input's order
            and O(1) logits at any depth; rules in ``skipkern.nn.init.scaled_stds`` and ``hyper_scale``).
            Both families draw the same Gaussian numbers from the seed and differ only in the scale of
            each weight matrix (and of the fixed hyper-residual matrices), so a seed names the same net
            up to scale. Biases are zero in both; no normalisation layers are added.
        init_gain: multiplies the standard deviation of every hidden weight matrix (not the output
            layer's), for init-scale sweeps; 1 leaves the family's scheme unchanged.
        fused: None (one fused op per layer) or "mlp" (the whole net in one op, skipkern.nn.fused_mlp;
            where it cannot run, the per-layer path, with the reason logged and kept in ``fused_path``).
        precision: fp32 products of every layer (and of the whole-MLP op): None / "auto", "ieee" or "tf32"
            (triton only; see ``skipkern.ops.skip_linear``). Setting ``model.precision`` later updates them.
    """

    def __init__(self, in_features: int, width: int, depth: int, out_features: int, arch: str = "residual",
                 activation: str = "relu", backend: str = "auto", degenerate_fraction: float = 0.5,
                 hyper_reduce: str = "mean", hyper_skip: str = "orthogonal",
                 batchnorm_layers: Sequence[int] = (), bias: bool = True, seed: Optional[int] = None,
                 device=None, dtype=None, init: str = "glorot", init_gain: float = 1.0,
                 fused: Optional[str] = None, precision: Optional[str] = None):
        super().__init__()
        self.fused = check_fused(fused)
        precision = check_precision(precision)
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
        for name, v in (("in_features", in_features), ("width", width), ("depth", depth),
                        ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if hyper_reduce not in ("mean", "sum"):
            raise ValueError(f"hyper_reduce must be 'mean' or 'sum', got {hyper_reduce!r}")
        if hyper_skip not in ("orthogonal", "identity"):
            raise ValueError(f"hyper_skip must be 'orthogonal' or 'identity', got {hyper_skip!r}")
        bad = [i for i in batchnorm_layers if not 0 <= int(i) < depth]
        if bad:
            raise ValueError(f"batchnorm_layers must be hidden-layer indices in [0, {depth}), got {bad}")
        self.in_features, self.width, self.depth, self.out_features = in_features, width, depth, out_features
        self.arch, self.activation = arch, activation
        self.hyper_reduce, self.hyper_skip = hyper_reduce, hyper_skip
        self.degenerate_fraction = degenerate_fraction
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not (isinstance(init_gain, (int, float)) and init_gain > 0):
            raise ValueError(f"init_gain must be a positive number, got {init_gain!r}")
        self.init, self.init_gain = init, float(init_gain)
        g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        kw = dict(activation=activation, backend=backend, bias=bias, generator=g, device=device, dtype=dtype,
                  precision=precision)
        layers = [SkipLinear(in_features, width, skip="none", **kw)]
        skip = _ARCH_SKIP[arch]
        for _ in range(depth - 1):
            layers.append(SkipLinear(width, width, skip=skip, degenerate_fraction=degenerate_fraction, **kw))
        out_kw = dict(kw, activation="identity")
        layers.append(SkipLinear(width, out_features, skip="none", **out_kw))
        self.layers = nn.ModuleList(layers)
        self.batchnorm_layers = tuple(sorted(int(i) for i in batchnorm_layers))
        self.norms = nn.ModuleDict({str(i): nn.BatchNorm1d(width, device=device, dtype=dtype)
                                    for i in self.batchnorm_layers})
        n_hyper = max(depth - 2, 0) if arch == "hyper_residual" else 0
        dt = self.layers[0].weight.dtype
        for k in range(n_hyper):
            p = (random_orthogonal(width, width, generator=g, dtype=dt) if hyper_skip == "orthogonal"
                 else torch.eye(width, dtype=dt))
            self.register_buffer(f"hyper_{k}", p.to(self.layers[0].weight.device))
        self.n_hyper = n_hyper
        self._rescale_init()

    @torch.no_grad()
    def _rescale_init(self) -> None:
        """Turn the Glorot-normal draws of the constructor into the chosen family's scales (in place).
        "glorot" with gain 1 touches nothing, so it stays bit for bit the paper's initialisation."""
        if self.init == "glorot":
            if self.init_gain != 1.0:
                for layer in self.hidden_layers:
                    layer.weight.mul_(self.init_gain)
            return
        stds = scaled_stds(self.arch, self.in_features, self.width, self.depth, self.out_features,
                           degenerate_fraction=self.degenerate_fraction, gain=self.init_gain)
        for layer, std in zip(self.layers, stds):
            layer.weight.mul_(std / glorot_std(layer.in_features, layer.out_features))
        gamma = hyper_scale(self.depth, self.hyper_skip, self.hyper_reduce)
        for k in range(self.n_hyper):
            getattr(self, f"hyper_{k}").mul_(gamma)

    @property
    def hidden_layers(self) -> nn.ModuleList:
        """The ``depth`` hidden SkipLinear layers (input layer first), without the output layer."""
        return self.layers[:-1]

    @property
    def output_layer(self) -> SkipLinear:
        return self.layers[-1]

    def hyper_matrix(self, k: int) -> torch.Tensor:
        """P_k [width, width], the fixed hyper-residual matrix from hidden layer k (1-based source)."""
        return getattr(self, f"hyper_{k - 1}")

    def hyper_coefficient(self, j: int) -> float:
        """c_j of the hyper-residual term entering h_{j+1} (j = 2 .. depth-1)."""
        return 1.0 / (j - 1) if self.hyper_reduce == "mean" else 1.0

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        """x [B, in_features] -> logits [B, out_features]; with return_hidden, also the list of the
        ``depth`` hidden representations h_1 .. h_depth, each [B, width] (after skip and BN)."""
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape [batch, {self.in_features}], got {tuple(x.shape)}")
        if self.fused is not None:
            out = fused_forward(self, x, return_hidden)
            if out is not None:  # None: the whole-MLP op cannot run here (reason logged), per-layer path below
                return out
        hidden = []
        h = self.layers[0](x)
        h = self._norm(0, h)
        hidden.append(h)
        hyper_sum = None
        for j in range(1, self.depth):
            h_new = self.layers[j](h)
            if self.n_hyper:
                if j >= 2:
                    term = hyper_sum * self.hyper_coefficient(j)
                    h_new = h_new + term
                if j <= self.n_hyper:
                    contrib = h @ self.hyper_matrix(j).transpose(0, 1)
                    hyper_sum = contrib if hyper_sum is None else hyper_sum + contrib
            h = self._norm(j, h_new)
            hidden.append(h)
        logits = self.layers[-1](h)
        return (logits, hidden) if return_hidden else logits

    @property
    def precision(self) -> str:
        """fp32 products of every layer and of the whole-MLP op ("auto", "ieee" or "tf32")."""
        return self.layers[0].precision

    @precision.setter
    def precision(self, value: Optional[str]) -> None:
        value = check_precision(value)
        for layer in self.layers:
            layer.precision = value

    def _norm(self, i: int, h: torch.Tensor) -> torch.Tensor:
        key = str(i)
        return self.norms[key](h) if key in self.norms else h

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, width={self.width}, depth={self.depth}, "
                f"out_features={self.out_features}, arch={self.arch!r}, init={self.init!r}")

    def layer_specs(self) -> list:
        """One description of the forward pass, layer by layer (the output layer last), for code that
        re-derives it (the fused Hessian R-op). Layer l maps its input h_l (h_0 = x) to
            h_{l+1} = norm(act(h_l W^T + b) + S(h_l) + c * sum_{i<l} h_i P_i^T)
        Each entry is a dict: ``index``; ``weight_name`` / ``bias_name`` (names in
        ``self.named_parameters()``; bias_name None without a bias); ``weight`` [out, in] / ``bias``
        [out] (the Parameters, or None); ``activation``; ``skip`` "none" | "identity" | "dense" with
        ``skip_weight`` (Q [out, in] for "dense", else None); ``hyper_coefficient`` c (0.0 when the
        layer adds no hyper-residual term); ``hyper_source`` (P_l [width, width] when this layer's
        input h_l feeds the later layers' hyper terms, else None); ``norm`` (the BatchNorm1d applied
        to this layer's output, or None)."""
        last = len(self.layers) - 1
        specs = []
        for i, layer in enumerate(self.layers):
            dense = layer.skip in ("orthogonal", "degenerate")
            specs.append(dict(
                index=i, weight_name=f"layers.{i}.weight", weight=layer.weight,
                bias_name=None if layer.bias is None else f"layers.{i}.bias", bias=layer.bias,
                activation=layer.activation, skip="dense" if dense else layer.skip,
                skip_weight=layer.skip_weight if dense else None,
                hyper_coefficient=self.hyper_coefficient(i) if (self.n_hyper and 2 <= i < last) else 0.0,
                hyper_source=self.hyper_matrix(i) if 1 <= i <= self.n_hyper else None,
                norm=self.norms[str(i)] if (i < last and str(i) in self.norms) else None))
        return specs


@torch.no_grad()
def malicious_init_(model: SkipMLP) -> SkipMLP:
    """The paper's malicious initialisation: W <- W - I on every square hidden layer, in place."""
    for layer in model.hidden_layers:
        w = layer.weight
        if w.shape[0] == w.shape[1]:
            w.sub_(torch.eye(w.shape[0], dtype=w.dtype, device=w.device))
    return model
