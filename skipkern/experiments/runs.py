"""Training runs shared by the deep-net experiments, cached on disk.

A run is fully described by a ``RunSpec`` (architecture, sizes, seed, regulariser, training budget,
measurements) plus the context's data set. Its folder ``<out>/runs/<label>-<hash>/`` holds train.py's
files (checkpoint.pt, metrics.jsonl/csv, spectra/) and ``record.json``, the compact summary the
experiments read. Experiments that ask for the same spec share one run: ``repro all`` trains the
plain and residual nets once for ``architectures``, ``skips``, ``malicious`` and ``seeds``, and a
re-run of an interrupted ``repro`` resumes unfinished runs and skips finished ones.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from skipkern import distributed as sd
from skipkern.experiments.common import Context, read_json, write_json

log = logging.getLogger("skipkern")

__all__ = ["RunSpec", "train_run", "cached_record", "cached_records", "run_folder", "deep_spec", "final_metric", "series", "diag_series", "RECORD_VERSION"]

RECORD_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """One training run of a SkipMLP.

    Attributes:
        arch: SkipMLP arch ("plain", "residual", "orthogonal", "degenerate", "hyper_residual").
        depth, width: hidden layers and units. seed: model weights, fixed skips, batch order.
        epochs, lr, batch_size: Adam training budget (paper: lr 5e-4, batch 500).
        n_train, n_test, data_seed: data set sizes (None: the loader's default) and generator seed.
        degenerate_fraction, hyper_reduce, hyper_skip, batchnorm_layers: SkipMLP options.
        malicious: apply ``malicious_init_`` (W <- W - I on square layers) before training.
        regularizer: None or {"kind": "biasreg", "mu", "sigma", "lam"} (BiasL2Reg: mu = sigma = 0).
        diagnostics_every: run the singularity diagnostics every this many epochs (and at epoch 0).
        spectrum_at, spectrum_probes, spectrum_steps, spectrum_samples, degenerate_eps: Hessian spectra
            (see ``skipkern.train.TrainConfig``); degenerate_eps is an absolute |lambda| threshold.
        degenerate_rel: the scale-free threshold: |lambda| <= degenerate_rel * max |lambda| (max over the
            density's Ritz values). Nets of different architectures have Hessians of very different scale
            (a depth-20 residual net at Glorot init has |lambda|max ~ 1e4, a plain one ~ 1), so only a
            threshold relative to the scale compares them; both fractions are recorded.
        label: a readable name for the folder (not part of the identity).
    """

    arch: str
    depth: int
    width: int
    seed: int
    epochs: int
    lr: float = 5e-4
    batch_size: int = 500
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    data_seed: int = 0
    degenerate_fraction: float = 0.5
    hyper_reduce: str = "mean"
    hyper_skip: str = "orthogonal"
    batchnorm_layers: tuple = ()
    malicious: bool = False
    regularizer: Optional[tuple] = None
    diagnostics_every: int = 0
    diag_batch: int = 500
    spectrum_at: tuple = ()
    spectrum_probes: int = 4
    spectrum_steps: int = 40
    spectrum_samples: int = 500
    degenerate_eps: float = 1e-3
    degenerate_rel: float = 1e-3
    label: str = field(default="", compare=False)

    def identity(self, ctx: Context) -> dict:
        d = asdict(self)
        d.pop("label")
        d["regularizer"] = dict(self.regularizer) if self.regularizer else None
        d.update(data=ctx.data, data_dir=str(ctx.data_dir) if ctx.data_dir else None, device=ctx.device,
                 record_version=RECORD_VERSION)
        return d

    def key(self, ctx: Context) -> str:
        blob = json.dumps(self.identity(ctx), sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:10]


def deep_spec(cfg: dict, arch: str, seed: int, **overrides) -> RunSpec:
    """The RunSpec of a deep-net recipe config (keys: depth, width, epochs, lr, batch_size, n_train,
    n_test, diagnostics_every, diag_batch, spectrum_*; absent spectrum_at = no spectra)."""
    keys = ("depth", "width", "epochs", "lr", "batch_size", "n_train", "n_test", "diagnostics_every", "diag_batch",
            "spectrum_probes", "spectrum_steps", "spectrum_samples", "degenerate_eps", "degenerate_rel")
    kw = {k: cfg[k] for k in keys if k in cfg}
    kw["spectrum_at"] = tuple(cfg.get("spectrum_at", ()))
    kw.update(overrides)
    if "label" not in kw:
        kw["label"] = arch
    return RunSpec(arch=arch, seed=int(seed), **kw)


def _build(spec: RunSpec, ctx: Context, data):
    from skipkern.nn import SkipMLP, malicious_init_
    from skipkern.regularizers import BiasReg

    model = SkipMLP(data.in_features, spec.width, spec.depth, data.num_classes, arch=spec.arch,
                    degenerate_fraction=spec.degenerate_fraction, hyper_reduce=spec.hyper_reduce,
                    hyper_skip=spec.hyper_skip, batchnorm_layers=spec.batchnorm_layers, backend=ctx.backend,
                    seed=spec.seed, device=ctx.device)
    if spec.malicious:
        malicious_init_(model)
    reg = None
    if spec.regularizer:
        r = dict(spec.regularizer)
        if r.get("kind") != "biasreg":
            raise ValueError(f"regularizer kind must be 'biasreg', got {r.get('kind')!r}")
        reg = BiasReg(model, mu=float(r["mu"]), sigma=float(r["sigma"]), lam=float(r["lam"]), seed=spec.seed)
    return model, reg


def _compact(history: list) -> list:
    """The per-epoch records without the bulky per-layer diagnostics arrays of every epoch (kept in
    metrics.jsonl); diagnostics keep their summaries and the condition numbers per layer."""
    out = []
    for rec in history:
        r = {k: v for k, v in rec.items() if k != "diagnostics"}
        if "diagnostics" in rec:
            diag = {}
            for name, d in rec["diagnostics"].items():
                diag[name] = {"summary": d.get("summary", {})}
                if name in ("condition_numbers", "gradient_norms", "elimination", "linear_dependence"):
                    diag[name]["arrays"] = d.get("arrays", {})
            r["diagnostics"] = diag
        out.append(r)
    return out


def relative_fractions(history: list, rel: float) -> None:
    """Add scale-free fractions to every spectrum record that saved its density (in place):
    spectral_scale (max |Ritz value|), fraction_degenerate_rel (|lambda| <= rel * scale) and
    fraction_negative_rel (lambda < -rel * scale), each with its standard error across probes."""
    from skipkern.hessian.density import SpectralDensity
    for rec in history:
        spec = rec.get("spectrum")
        if not spec or not spec.get("path"):
            continue
        dens = SpectralDensity.load(spec["path"])
        live = dens.weights > 0
        scale = float(np.abs(dens.nodes[live]).max()) if live.any() else 0.0
        eps = rel * scale
        deg, neg = dens.fraction_degenerate(eps), dens.fraction_negative(eps)
        spec.update(spectral_scale=scale, degenerate_rel=rel, fraction_degenerate_rel=float(deg[0]),
                    fraction_degenerate_rel_se=float(deg[1]), fraction_negative_rel=float(neg[0]),
                    fraction_negative_rel_se=float(neg[1]))


def run_folder(spec: RunSpec, ctx: Context):
    return ctx.runs_dir / f"{spec.label or spec.arch}-{spec.key(ctx)}"


def _read_record(spec: RunSpec, ctx: Context) -> Optional[dict]:
    rec_path = run_folder(spec, ctx) / "record.json"
    if rec_path.is_file():
        rec = read_json(rec_path)
        if rec.get("identity") == json.loads(json.dumps(spec.identity(ctx), default=str)):
            rec["cached"] = True
            return rec
    return None


def cached_records(specs: Sequence[RunSpec], ctx: Context) -> list:
    """The finished record of each spec (None where no earlier run wrote one with the same identity).

    Under torch.distributed rank 0 reads its disk and broadcasts, so every rank decides the same
    (train or skip) even when the other ranks cannot see rank 0's files: a collective call."""
    return sd.run_on_main(lambda: [_read_record(s, ctx) for s in specs], ctx.group)


def cached_record(spec: RunSpec, ctx: Context) -> Optional[dict]:
    """``cached_records`` of one spec (a collective under torch.distributed)."""
    return cached_records([spec], ctx)[0]


def train_run(spec: RunSpec, ctx: Context, on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Train (or load the finished record of) one run. Returns its record: spec, history (compact),
    final metrics, model parameter count, elapsed seconds and the run folder.

    ``on_epoch`` is called with each epoch's record as training goes (progress bars). Under
    torch.distributed every rank calls this with the same spec: the net trains under DDP, rank 0
    writes the run folder and the record, and every rank returns rank 0's record."""
    from skipkern.train import TrainConfig, train

    rec = cached_record(spec, ctx)
    if rec is not None:
        return rec
    folder = run_folder(spec, ctx)
    rec_path = folder / "record.json"
    data = ctx.dataset(spec.n_train, spec.n_test, spec.data_seed)
    model, reg = _build(spec, ctx, data)
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, seed=spec.seed, device=ctx.device,
                      eval_every=1, diagnostics_every=spec.diagnostics_every, diag_batch=spec.diag_batch,
                      spectrum_at=tuple(spec.spectrum_at), spectrum_probes=spec.spectrum_probes,
                      spectrum_steps=spec.spectrum_steps, spectrum_samples=spec.spectrum_samples,
                      degenerate_eps=spec.degenerate_eps, regularizer=reg, progress=False)
    t0 = time.perf_counter()
    result = train(model, data, cfg, out_dir=folder, resume=True, log=on_epoch or (lambda r: None))

    def record() -> dict:  # reads the spectra rank 0 saved: rank 0 only, broadcast
        history = _compact(result.history)
        relative_fractions(history, spec.degenerate_rel)
        rec = {"identity": spec.identity(ctx), "label": spec.label, "folder": str(folder), "history": history,
               "final": {k: v for k, v in result.final.items() if isinstance(v, (int, float))},
               "num_params": int(sum(p.numel() for p in model.parameters())),
               "elapsed_s": time.perf_counter() - t0, "stopped_early": bool(result.stopped_early), "cached": False}
        write_json(rec_path, rec)
        return read_json(rec_path)  # the same form a cached read gives (inf/nan restored)

    return sd.run_on_main(record, ctx.group)


# ----------------------------------------------------------------------------------------- accessors
def final_metric(rec: dict, key: str = "train_acc") -> float:
    """The last evaluated value of ``key`` (e.g. train_acc, test_acc, train_loss)."""
    for r in reversed(rec["history"]):
        if isinstance(r.get(key), (int, float)):
            return float(r[key])
    return float("nan")


def series(rec: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of a dotted key over the history records that have it."""
    xs, ys = [], []
    for r in rec["history"]:
        v = r
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            xs.append(r["epoch"])
            ys.append(float(v))
    return np.asarray(xs), np.asarray(ys, dtype=float)


def diag_series(rec: dict, name: str, array: str) -> dict:
    """{epoch: per-layer array} of one diagnostic array over the epochs where it was measured."""
    out = {}
    for r in rec["history"]:
        d = r.get("diagnostics", {}).get(name)
        if d and array in d.get("arrays", {}):
            out[int(r["epoch"])] = np.asarray(d["arrays"][array], dtype=float)
    return out
