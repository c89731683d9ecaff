"""Training runs shared by the deep-net experiments, cached on disk.

A run is fully described by a ``RunSpec`` (architecture, init family, sizes, seed, regulariser,
budget in optimiser steps, measurements) plus the context's data set. Its folder
``<out>/runs/<label>-<hash>/`` holds the training files (checkpoint.pt, metrics.jsonl/csv, spectra/)
and ``record.json``, the compact summary the experiments read: the per-epoch history, the signal
propagation at initialisation and after training (``skipkern.diagnostics.propagation``) and the
Hessian spectra's summaries (``spectra.summarize``). Experiments that ask for the same spec share one
run, and a re-run of an interrupted ``repro`` resumes unfinished runs and skips finished ones.

Budgets are optimiser steps, not epochs: a change of data size changes the steps per epoch, so
``steps`` fixes the work and the epochs follow (the last epoch may be partial). Evaluations,
diagnostics and spectra are scheduled in epochs that divide the run evenly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from skipkern import distributed as sd
from skipkern.experiments.common import Context, read_json, write_json

log = logging.getLogger("skipkern")

__all__ = ["RunSpec", "train_run", "cached_record", "cached_records", "run_folder", "deep_spec", "spec_from_identity",
           "final_metric",
           "initial_metric", "series", "diag_series", "schedule", "RECORD_VERSION"]

RECORD_VERSION = 2


@dataclass(frozen=True)
class RunSpec:
    """One training run of a SkipMLP.

    Attributes:
        arch: SkipMLP arch ("plain", "residual", "orthogonal", "degenerate", "hyper_residual").
        depth, width: hidden layers and units. seed: model weights, fixed skips, batch order.
        steps: the budget in Adam steps (lr, batch_size: paper lr 5e-4, batch 500).
        init, init_gain: SkipMLP's init family ("glorot": the paper's; "scaled": scale-controlled) and gain.
        n_train, n_test, data_seed: data set sizes (None: the loader's default) and generator seed.
        degenerate_fraction, hyper_reduce, hyper_skip, batchnorm_layers: SkipMLP options.
        malicious: apply ``malicious_init_`` (W <- W - I on square layers) before training.
        regularizer: None or sorted items of {"kind": "biasreg", "mu", "sigma", "lam"}.
        eval_points: about this many evaluations of the training/test loss and accuracy over the run,
            on ``train_eval_samples`` fixed training samples (None: all).
        diag_points: about this many singularity diagnoses after initialisation (0: none), on
            ``diag_batch`` fixed samples; the signal propagation uses the same batch.
        spectra: when to estimate the Hessian eigenvalue density: any of "init", "end".
        spectrum_probes, spectrum_steps, spectrum_samples: stochastic Lanczos quadrature settings.
        spectrum_deflate: outlier eigenpairs deflated before the quadrature (0: none, "auto" or a count),
            where ``skipkern.hessian.spectral_density`` supports it (else 0 is used and recorded).
        label: a readable name for the folder (not part of the identity).
    """

    arch: str
    depth: int
    width: int
    seed: int
    steps: int
    init: str = "glorot"
    init_gain: float = 1.0
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
    eval_points: int = 20
    train_eval_samples: Optional[int] = None
    diag_points: int = 4
    diag_batch: int = 500
    spectra: tuple = ()
    spectrum_probes: int = 4
    spectrum_steps: int = 40
    spectrum_samples: int = 500
    spectrum_deflate: object = 0
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


SPEC_KEYS = ("depth", "width", "steps", "lr", "batch_size", "n_train", "n_test", "eval_points", "train_eval_samples",
             "diag_points", "diag_batch", "spectrum_probes", "spectrum_steps", "spectrum_samples", "spectrum_deflate")


def spec_from_identity(identity: dict) -> RunSpec:
    """The RunSpec of a record's identity (the inverse of ``RunSpec.identity``, label aside)."""
    from dataclasses import fields
    kw = {f.name: identity[f.name] for f in fields(RunSpec) if f.name in identity}
    for k in ("batchnorm_layers", "spectra"):
        kw[k] = tuple(kw.get(k) or ())
    if kw.get("regularizer"):
        kw["regularizer"] = tuple(sorted(dict(kw["regularizer"]).items()))
    return RunSpec(**kw)


def deep_spec(cfg: dict, arch: str, seed: int, init: str, **overrides) -> RunSpec:
    """The RunSpec of a deep-net recipe config (keys ``SPEC_KEYS`` and ``spectra``; absent = defaults)."""
    kw = {k: cfg[k] for k in SPEC_KEYS if k in cfg}
    kw["spectra"] = tuple(cfg.get("spectra", ()))
    kw.update(overrides)
    if "label" not in kw:
        kw["label"] = arch
    kw["label"] = f"{init}-{kw['label']}"
    return RunSpec(arch=arch, seed=int(seed), init=init, **kw)


def schedule(spec: RunSpec, n_train: int) -> dict:
    """Epochs of a run and the epochs of its measurements, from its step budget and data size.

    epochs = ceil(steps / steps_per_epoch); evaluations and diagnoses every k epochs with k the largest
    divisor of ``epochs`` not above epochs / points (so the last epoch is always measured). Spectra are
    taken before the first step ("init") and after the last ("end") by ``train_run`` itself."""
    spe = math.ceil(n_train / spec.batch_size)
    epochs = max(1, math.ceil(spec.steps / spe))

    def every(points: int) -> int:
        if points <= 0:
            return 0
        cap = max(1, epochs // points)
        return max(d for d in range(1, cap + 1) if epochs % d == 0)

    return {"steps_per_epoch": spe, "epochs": epochs, "eval_every": every(spec.eval_points),
            "diagnostics_every": every(spec.diag_points), "spectra": [w for w in ("init", "end") if w in spec.spectra]}


def _build(spec: RunSpec, ctx: Context, data):
    from skipkern.nn import SkipMLP, malicious_init_
    from skipkern.regularizers import BiasReg

    model = SkipMLP(data.in_features, spec.width, spec.depth, data.num_classes, arch=spec.arch,
                    degenerate_fraction=spec.degenerate_fraction, hyper_reduce=spec.hyper_reduce,
                    hyper_skip=spec.hyper_skip, batchnorm_layers=spec.batchnorm_layers, backend=ctx.backend,
                    seed=spec.seed, device=ctx.device, init=spec.init, init_gain=spec.init_gain)
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
    metrics.jsonl); diagnostics keep their summaries and the per-layer arrays the experiments use."""
    keep = {"condition_numbers", "gradient_norms", "elimination", "linear_dependence", "overlap"}
    out = []
    for rec in history:
        r = {k: v for k, v in rec.items() if k != "diagnostics"}
        if "diagnostics" in rec:
            r["diagnostics"] = {name: {"summary": d.get("summary", {}),
                                       **({"arrays": d.get("arrays", {})} if name in keep else {})}
                                for name, d in rec["diagnostics"].items()}
        out.append(r)
    return out


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


def _diag_batch(data, spec: RunSpec):
    import torch
    n = data.n_train
    if spec.diag_batch >= n:
        return data.x_train, data.y_train
    g = torch.Generator().manual_seed(int(spec.seed) * 1_000_003 + 2)  # the training loop's diagnosis stream
    idx = torch.randperm(n, generator=g)[:spec.diag_batch].to(data.x_train.device)
    return data.x_train[idx], data.y_train[idx]


def _spectrum(model, data, spec: RunSpec, ctx: Context, path) -> dict:
    """Hessian eigenvalue density of the mean cross entropy on ``spectrum_samples`` fixed training samples
    (the training loop's spectrum stream), saved to ``path`` (rank 0); reused when ``path`` exists (a
    resumed run keeps the density of its initialisation). Returns {"path", "samples", "time", "deflate"}."""
    import inspect

    import torch
    import torch.nn.functional as F

    from skipkern.hessian import HessianOperator, SpectralDensity, spectral_density
    if path.is_file():
        d = SpectralDensity.load(path)
        return {"path": str(path), "samples": d.meta.get("samples"), "time": d.meta.get("time"),
                "deflate": d.meta.get("deflate", 0)}
    t0 = time.perf_counter()
    n = data.n_train
    k = min(spec.spectrum_samples, n)
    g = torch.Generator().manual_seed(int(spec.seed) * 1_000_003 + 3)
    idx = torch.randperm(n, generator=g)[:k].to(data.x_train.device)
    x, y, group = data.x_train[idx], data.y_train[idx], ctx.group
    op = HessianOperator(model, F.cross_entropy, (sd.shard(x, group), sd.shard(y, group)), process_group=group)
    kw = {}
    deflate = spec.spectrum_deflate
    if deflate and "deflate" in inspect.signature(spectral_density).parameters:
        kw["deflate"] = deflate
    else:
        deflate = 0
    which = 0 if path.stem == "init" else 1
    dens = spectral_density(op, num_probes=spec.spectrum_probes, num_steps=spec.spectrum_steps,
                            seed=int(spec.seed) * 7919 + which, progress=False, **kw)
    dens.meta.update(samples=k, time=time.perf_counter() - t0, deflate=deflate)
    if sd.is_main(group):
        path.parent.mkdir(parents=True, exist_ok=True)
        dens.save(path)
    return {"path": str(path), "samples": k, "time": dens.meta["time"], "deflate": deflate}


def train_run(spec: RunSpec, ctx: Context, on_epoch: Optional[Callable[[dict], None]] = None) -> dict:
    """Train (or load the finished record of) one run. Returns its record: identity, schedule, history
    (compact), final metrics, signal propagation at init and at the end, spectra summaries, parameter
    count, elapsed seconds and the run folder.

    ``on_epoch`` is called with each epoch's record as training goes (progress bars). Under
    torch.distributed every rank calls this with the same spec: the net trains under DDP, rank 0
    writes the run folder and the record, and every rank returns rank 0's record."""
    from skipkern.diagnostics.propagation import signal_propagation
    from skipkern.experiments.spectra import summarize_file
    from skipkern.train import TrainConfig, train

    rec = cached_record(spec, ctx)
    if rec is not None:
        return rec
    folder = run_folder(spec, ctx)
    rec_path = folder / "record.json"
    data = ctx.dataset(spec.n_train, spec.n_test, spec.data_seed)
    plan = schedule(spec, data.n_train)
    model, reg = _build(spec, ctx, data)
    xd, yd = _diag_batch(data, spec)
    signal = {"init": signal_propagation(model, xd, yd, data.num_classes)}
    spectra_files = {}
    if "init" in plan["spectra"]:
        spectra_files["init"] = _spectrum(model, data, spec, ctx, folder / "spectra" / "init.json")
    cfg = TrainConfig(epochs=plan["epochs"], max_steps=spec.steps, batch_size=spec.batch_size, lr=spec.lr,
                      seed=spec.seed, device=ctx.device, eval_every=plan["eval_every"],
                      train_eval_samples=spec.train_eval_samples, diagnostics_every=plan["diagnostics_every"],
                      diag_batch=spec.diag_batch, regularizer=reg, progress=False)
    t0 = time.perf_counter()
    result = train(model, data, cfg, out_dir=folder, resume=True, log=on_epoch or (lambda r: None))
    signal["final"] = signal_propagation(model, xd, yd, data.num_classes)
    if "end" in plan["spectra"] and not result.diverged:
        spectra_files["end"] = _spectrum(model, data, spec, ctx, folder / "spectra" / "end.json")

    def record() -> dict:  # reads the spectra rank 0 saved: rank 0 only, broadcast
        history = _compact(result.history)
        spectra = {w: {**f, **summarize_file(f["path"], num_classes=data.num_classes, samples=f["samples"])}
                   for w, f in spectra_files.items()}
        rec = {"identity": spec.identity(ctx), "label": spec.label, "folder": str(folder), "schedule": plan,
               "history": history, "final": {k: v for k, v in result.final.items() if isinstance(v, (int, float))},
               "signal": signal, "spectra": spectra, "num_params": int(sum(p.numel() for p in model.parameters())),
               "num_classes": data.num_classes, "n_train": data.n_train,
               "elapsed_s": time.perf_counter() - t0, "stopped_early": bool(result.stopped_early),
               "diverged": bool(result.diverged), "cached": False}
        write_json(rec_path, rec)
        return read_json(rec_path)  # the same form a cached read gives (inf/nan restored)

    return sd.run_on_main(record, ctx.group)


# ----------------------------------------------------------------------------------------- accessors
def final_metric(rec: dict, key: str = "train_acc") -> float:
    """The last evaluated value of ``key`` (e.g. train_acc, test_acc, train_loss); NaN for a diverged run."""
    if rec.get("diverged"):
        return math.nan
    for r in reversed(rec["history"]):
        if isinstance(r.get(key), (int, float)):
            return float(r[key])
    return math.nan


def initial_metric(rec: dict, key: str = "train_loss") -> float:
    """The value of ``key`` at initialisation (epoch 0)."""
    for r in rec["history"]:
        if r.get("epoch") == 0 and isinstance(r.get(key), (int, float)):
            return float(r[key])
    return math.nan


def series(rec: dict, key: str, x: str = "step") -> tuple[np.ndarray, np.ndarray]:
    """(steps (or epochs with x="epoch"), values) of a dotted key over the history records that have it."""
    xs, ys = [], []
    for r in rec["history"]:
        v = r
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        if isinstance(v, (int, float)):
            xs.append(r[x])
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
