"""Shared pieces of the experiments: the run context, output files, seed statistics and verdicts.

Every experiment writes into ``<out>/<experiment>/``:
    results.json   config, per-seed raw numbers, summaries (mean, std over seeds), findings, timing
    <name>.csv     one row per run (condition x seed) with the scalar metrics
    <figure>.png / .svg
A *finding* puts one of the paper's results (docs/paper.md) beside what the run measured, per init family,
with a verdict ("reproduced", "not reproduced", "inconclusive" or "invalid (why)") decided by the
registered predictions (``predictions``) under the two-sided rules of ``verdicts``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import torch

from skipkern.diagnostics import json_safe
from skipkern.experiments.verdicts import INCONCLUSIVE, INVALID, NOT_REPRODUCED, REPRODUCED

log = logging.getLogger("skipkern")

__all__ = ["Context", "Finding", "Comparison", "write_json", "read_json", "write_csv", "stats", "fmt",
           "compare", "verdict", "correlation", "REPRODUCED", "NOT_REPRODUCED", "INCONCLUSIVE", "INVALID"]



@dataclass
class Context:
    """Where and how experiments run.

    Attributes:
        out: root output folder; experiment ``name`` writes to ``out / name``, shared training runs to
            ``out / "runs"`` (reused by later experiments with the same settings, and on re-runs).
        device: "cpu" or "cuda" (models, data and Hessian products).
        backend: skip_linear backend of every layer ("auto", "cpp", "torch", ...).
        data, data_dir: data set name and folder (see ``skipkern.data.load_dataset``).
        seeds: overrides every recipe's seed list when given.
        mode: "quick", "full" or "tiny" (the recipe configuration to use).
        progress: show tqdm progress bars.
        jobs: training runs trained at once in worker processes (1: in this process).
    Hessian spectra use skipkern.hessian's automatic HVP backend (the fused R-op for SkipMLP).
    """

    out: Path
    device: str = "cpu"
    backend: str = "auto"
    data: str = "mnist1d"
    data_dir: Optional[str] = None
    seeds: Optional[list] = None
    mode: str = "quick"
    progress: bool = True
    jobs: int = 1
    _datasets: dict = field(default_factory=dict, repr=False)
    _pool: Any = field(default=None, repr=False)
    _ticks: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.mode not in ("quick", "full", "tiny"):
            raise ValueError(f"mode must be 'quick', 'full' or 'tiny', got {self.mode!r}")
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive int, got {self.jobs!r}")

    @property
    def group(self) -> Optional[object]:
        """The torch.distributed process group when one is initialised (launched by torchrun), else None.
        Under a group every rank runs the same recipes (training under DDP, Hessian products
        all-reduced); only rank 0 writes files (``write_json``, ``write_csv``, ``save_figure``)."""
        from skipkern import distributed as sd
        return sd.resolve_group("default")

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        from skipkern.experiments.parallel import shutdown
        shutdown(self)

    def exp_dir(self, name: str) -> Path:
        return _made(self.out / name)

    @property
    def runs_dir(self) -> Path:
        return _made(self.out / "runs")

    def dataset(self, n_train: Optional[int], n_test: Optional[int], seed: int = 0):
        """The context's data set with these sizes, loaded once and kept on ``device``."""
        from skipkern.data import load_dataset
        key = (self.data, self.data_dir, n_train, n_test, seed)
        if key not in self._datasets:
            t0 = time.perf_counter()
            ds = load_dataset(self.data, data_dir=self.data_dir, n_train=n_train, n_test=n_test, seed=seed)
            self._datasets[key] = ds.to(self.device)
            log.info("data %s: %d train / %d test samples, %d features (%.1f s)", self.data, ds.n_train,
                     ds.n_test, ds.in_features, time.perf_counter() - t0)
        return self._datasets[key]

    def describe(self) -> dict:
        from skipkern import distributed as sd
        return {"out": str(self.out), "device": self.device, "backend": self.backend, "data": self.data,
                "data_dir": self.data_dir, "seeds": self.seeds, "mode": self.mode, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "jobs": self.jobs, "world_size": sd.world_size(self.group)}


# ------------------------------------------------------------------------------------------ files
# Under torch.distributed only rank 0 writes: on the other ranks the writers below return the path
# they would have written and touch nothing, so every rank runs the same code (and the same
# collectives) and no two processes race for a file, whether or not the ranks share a file system.
def _writes() -> bool:
    from skipkern import distributed as sd
    return sd.is_main()


def _made(d: Path) -> Path:
    if _writes():
        d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(path: os.PathLike, obj: Any) -> str:
    """Strict JSON (inf/nan as strings, numpy as lists), written atomically (rank 0 only)."""
    path = Path(path)
    if not _writes():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(json_safe(obj), f, indent=1, allow_nan=False)
    os.replace(tmp, path)
    return str(path)


def read_json(path: os.PathLike) -> Any:
    from skipkern.diagnostics import from_json_safe
    with open(path) as f:
        return from_json_safe(json.load(f))


def write_csv(path: os.PathLike, rows: Sequence[dict]) -> str:
    """One row per dict; the header is the union of keys in first-seen order (rank 0 only)."""
    path = Path(path)
    if not _writes():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: json_safe(v) for k, v in r.items()})
    return str(path)


# ------------------------------------------------------------------------------------- statistics
def stats(values: Iterable[float]) -> dict:
    """n, mean, std (ddof 1), sem, min, max of the finite values (and the values themselves)."""
    v = np.asarray([float(x) for x in values], dtype=float)
    f = v[np.isfinite(v)]
    n = int(f.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "sem": math.nan, "min": math.nan, "max": math.nan,
                "values": v.tolist()}
    std = float(f.std(ddof=1)) if n > 1 else 0.0
    return {"n": n, "mean": float(f.mean()), "std": std, "sem": std / math.sqrt(n), "min": float(f.min()),
            "max": float(f.max()), "values": v.tolist()}


def fmt(values: Iterable[float], digits: int = 3, pct: bool = False) -> str:
    """'mean ± std (n=k)' of the finite values; ``pct`` prints percentages."""
    s = stats(values)
    if s["n"] == 0:
        return "n/a"
    k = 100.0 if pct else 1.0
    unit = "%" if pct else ""
    d = max(digits - 2, 1) if pct else digits
    return f"{s['mean'] * k:.{d}f}{unit} ± {s['std'] * k:.{d}f}{unit} (n={s['n']})"


@dataclass
class Comparison:
    """Outcome of one comparison between two conditions over seeds.

    ``outcome`` is "holds", "fails" or "unclear"; ``text`` states it with the numbers."""

    claim: str
    outcome: str
    diff: float
    noise: float
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float], relation: str = ">",
            tol: float = 0.0, pct: bool = False) -> Comparison:
    """Two-sided test of ``a <relation> b`` on the seed means with Welch's 95% interval of mean(a) - mean(b).

        ">":  holds if the interval lies above 0, fails if it lies below ``tol``, else unclear;
        "<":  the mirror image;
        "~":  holds if the interval lies inside [-tol, tol], fails if outside it, else unclear.
    One-sided "at least as good" relations (">=", "<=") are refused: they hold when nothing happened.
    The paper's results use registered predictions (``skipkern.experiments.predictions``) instead.
    """
    from skipkern.experiments.verdicts import welch_interval
    if relation not in (">", "<", "~"):
        raise ValueError(f"relation must be one of '>', '<', '~', got {relation!r}; one-sided '>='/'<=' rules "
                         f"pass when nothing happened (register a two-sided Prediction instead)")
    sa, sb = stats(a), stats(b)
    if sa["n"] == 0 or sb["n"] == 0:
        return Comparison(f"{name_a} {relation} {name_b}", "unclear", math.nan, math.nan,
                          f"{name_a} {relation} {name_b}: no finite values")
    d, lo, hi, _ = welch_interval(a, b)
    if relation == "~":
        outcome = "holds" if -tol <= lo and hi <= tol else ("fails" if hi < -tol or lo > tol else "unclear")
    else:
        s_ = 1.0 if relation == ">" else -1.0
        l2, h2 = sorted((s_ * lo, s_ * hi))
        outcome = "fails" if h2 < tol else ("holds" if l2 > 0 else "unclear")
    k = 100.0 if pct else 1.0
    u = "%" if pct else ""
    text = (f"{name_a} {fmt(a, pct=pct)} {relation} {name_b} {fmt(b, pct=pct)}: {outcome} "
            f"(difference {d * k:+.3g}{u}, 95% CI [{lo * k:+.3g}{u}, {hi * k:+.3g}{u}])")
    return Comparison(f"{name_a} {relation} {name_b}", outcome, d, (hi - lo) / 2, text)


def verdict(comparisons: Sequence[Comparison]) -> str:
    """All hold -> reproduced; any fails -> not reproduced; otherwise inconclusive."""
    outcomes = [c.outcome for c in comparisons]
    if outcomes and all(o == "holds" for o in outcomes):
        return REPRODUCED
    if any(o == "fails" for o in outcomes):
        return NOT_REPRODUCED
    return INCONCLUSIVE


def correlation(x: Sequence[float], y: Sequence[float]) -> dict:
    """Spearman and Pearson correlation of the finite pairs, with two-sided p-values and n."""
    from scipy import stats as sps
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    n = int(ok.sum())
    out = {"n": n, "spearman_r": math.nan, "spearman_p": math.nan, "pearson_r": math.nan, "pearson_p": math.nan}
    if n >= 3 and np.ptp(x[ok]) > 0 and np.ptp(y[ok]) > 0:
        s = sps.spearmanr(x[ok], y[ok])
        p = sps.pearsonr(x[ok], y[ok])
        out.update(spearman_r=float(s.statistic), spearman_p=float(s.pvalue),
                   pearson_r=float(p.statistic), pearson_p=float(p.pvalue))
    return out


@dataclass
class Finding:
    """One paper result beside this run's numbers, for one init family.

    Attributes:
        result: the result's number in docs/paper.md (1-7; 0 for the simplified model, which the paper
            describes but does not number) or a name for a result outside the paper's seven.
        claim: the paper's statement. verdict: REPRODUCED / NOT_REPRODUCED / INCONCLUSIVE / INVALID.
        evidence: what this run found, in words with the numbers.
        comparisons: legacy ``Comparison`` entries (recipes now use ``outcomes``).
        numbers: raw numbers behind the verdict. figure: the figure's file stem inside the experiment folder.
        family: the init family ("glorot", "scaled"; "" where it does not apply).
        reason: why the verdict is invalid or inconclusive. outcomes: ``verdicts.Outcome`` per registered
            prediction (its interval, n, rule and verdict). caveats: what a referee would raise.
    """

    result: object
    claim: str
    verdict: str
    evidence: str
    comparisons: list = field(default_factory=list)
    numbers: dict = field(default_factory=dict)
    figure: str = ""
    family: str = ""
    reason: str = ""
    outcomes: list = field(default_factory=list)
    caveats: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["comparisons"] = [c.to_dict() if isinstance(c, Comparison) else c for c in self.comparisons]
        d["outcomes"] = [o.to_dict() if hasattr(o, "to_dict") else o for o in self.outcomes]
        return d


PAPER_CLAIMS = {
    0: "Simplified model: plateaus near the degenerate lines h = 0 and z = ±1 in the plain model; with skip "
       "connections the degenerate lines disappear (a slow ghost region remains).",
    1: "Training accuracy: hyper-residual >= residual > plain.",
    2: "Fraction of degenerate eigenvalues: plain > residual > hyper-residual.",
    3: "Among plain nets from different seeds, those closer to singular manifolds train worse.",
    4: "BiasReg beats plain and BiasL2Reg, stays below residual; BiasReg plus one BN layer comes close.",
    5: "Orthogonal skips about equal identity skips; degenerate skips train worse; plain worst.",
    6: "The maliciously initialised residual net trains only slightly worse than the residual net.",
    7: "Condition numbers of hidden representations blow up with depth in plain nets, not in residual nets.",
}
