"""``LayerDiagnostics``: per-layer arrays plus scalar summaries, saveable as JSON/CSV and plottable."""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import numpy as np

__all__ = ["LayerDiagnostics", "json_safe", "from_json_safe"]


def json_safe(v: Any) -> Any:
    """Recursively convert to strict-JSON types: numpy -> lists/floats, inf/nan -> "inf"/"-inf"/"nan"."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.ndarray):
        return [json_safe(x) for x in v.tolist()]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        f = float(v)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if isinstance(v, np.bool_):
        return bool(v)
    if hasattr(v, "item") and callable(v.item) and getattr(v, "ndim", 1) == 0:  # 0-d torch tensor
        return json_safe(v.item())
    return v


_SPECIAL = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def from_json_safe(v: Any) -> Any:
    """Inverse of ``json_safe`` for numbers: "inf"/"-inf"/"nan" strings back to floats."""
    if isinstance(v, dict):
        return {k: from_json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [from_json_safe(x) for x in v]
    if isinstance(v, str) and v in _SPECIAL:
        return _SPECIAL[v]
    return v


@dataclass
class LayerDiagnostics:
    """Result of one diagnostic over the hidden layers of a network.

    Attributes:
        name: the diagnostic ("elimination", "overlap", ...).
        layers: one label per layer ("hidden_1", ... or module names).
        arrays: per-layer values, each a numpy array of shape [len(layers)].
        summary: scalar summaries over the layers.
        params: the settings used (thresholds, batch size, ...).
    """

    name: str
    layers: list
    arrays: dict
    summary: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.layers)
        self.arrays = {k: np.asarray(v) for k, v in self.arrays.items()}
        bad = {k: v.shape for k, v in self.arrays.items() if v.shape != (n,)}
        if bad:
            raise ValueError(f"every array must have shape [{n}] (one value per layer), got {bad}")

    def __getitem__(self, key: str) -> np.ndarray:
        return self.arrays[key]

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self, json_safe_values: bool = False) -> dict:
        """{"name", "layers", "arrays": {key: list}, "summary", "params"}. With ``json_safe_values``,
        inf/nan become the strings "inf"/"-inf"/"nan" (strict JSON)."""
        d = {"name": self.name, "layers": list(self.layers),
             "arrays": {k: v.tolist() for k, v in self.arrays.items()},
             "summary": {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.summary.items()},
             "params": dict(self.params)}
        return json_safe(d) if json_safe_values else d

    @classmethod
    def from_dict(cls, d: dict) -> "LayerDiagnostics":
        d = from_json_safe(d)
        return cls(name=d["name"], layers=list(d["layers"]),
                   arrays={k: np.asarray(v) for k, v in d["arrays"].items()},
                   summary=dict(d.get("summary", {})), params=dict(d.get("params", {})))

    def save_json(self, path: Union[str, os.PathLike]) -> None:
        """Strict JSON (inf/nan as strings); ``load_json`` reads it back."""
        with open(path, "w") as f:
            json.dump(self.to_dict(json_safe_values=True), f, indent=1)

    @classmethod
    def load_json(cls, path: Union[str, os.PathLike]) -> "LayerDiagnostics":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def save_csv(self, path: Union[str, os.PathLike]) -> None:
        """One row per layer: ``layer_index, layer, <array keys...>`` (inf written as "inf")."""
        keys = list(self.arrays)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["layer_index", "layer"] + keys)
            for i, lab in enumerate(self.layers):
                w.writerow([i + 1, lab] + [_csv_value(self.arrays[k][i]) for k in keys])

    def plot(self, ax=None, keys: Optional[Sequence[str]] = None, log: Optional[bool] = None, label: str = ""):
        """Plot per-layer arrays against layer index (1-based) on ``ax`` (a new figure if None).

        Args:
            keys: arrays to draw (default: the diagnostic's main arrays, see ``MAIN_KEYS``).
            log: log-scale y axis (default: True for condition numbers and gradient norms).
            label: prefix for the legend entries (e.g. the architecture).
        Infinite values are drawn as open markers at the top of the axis.
        """
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(5, 3.5))
        keys = list(keys) if keys is not None else [k for k in MAIN_KEYS.get(self.name, self.arrays)
                                                    if k in self.arrays]
        if log is None:
            log = self.name in ("condition_numbers", "gradient_norms")
        x = np.arange(1, len(self.layers) + 1)
        for k in keys:
            y = np.asarray(self.arrays[k], dtype=float)
            lab = f"{label} {k}".strip()
            (line,) = ax.plot(x, np.where(np.isfinite(y), y, np.nan), marker=".", label=lab)
            inf = np.isinf(y)
            if inf.any():
                finite = y[np.isfinite(y)]
                top = (finite.max() * (10 if log else 1.1)) if finite.size else 1.0
                ax.plot(x[inf], np.full(inf.sum(), top), linestyle="none", marker="^", mfc="none",
                        color=line.get_color(), label=f"{lab} (inf)")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("hidden layer")
        ax.set_ylabel(self.name.replace("_", " "))
        ax.legend(fontsize="small")
        return ax

    def __repr__(self) -> str:
        s = ", ".join(f"{k}={_fmt(v)}" for k, v in self.summary.items())
        return f"LayerDiagnostics({self.name!r}, {len(self.layers)} layers, {s})"


MAIN_KEYS = {
    "elimination": ("dead_fraction", "rare_fraction"),
    "overlap": ("weight_max_cos", "hidden_max_cos"),
    "linear_dependence": ("participation_ratio", "rank"),
    "condition_numbers": ("condition_number",),
    "gradient_norms": ("weight_grad_norm",),
}


def _csv_value(v: Any) -> Any:
    if isinstance(v, (float, np.floating)) and not math.isfinite(float(v)):
        return "nan" if math.isnan(float(v)) else ("inf" if v > 0 else "-inf")
    return v.item() if isinstance(v, np.generic) else v


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, (float, np.floating)) else repr(v)
