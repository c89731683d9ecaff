"""What a run measures: loss and accuracy, singularity diagnostics and Hessian spectra.

``hessian_spectrum`` is THE spectrum pipeline of skipkern: the training loop's spectra
(``spectrum_fractions``) and the ``skipkern spectrum`` command both call it. Under a process group every
rank passes the same full sample set and keeps its strided share (``skipkern.distributed.shard``); the
operator all-reduces each product, so the density is the same on every rank.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from skipkern import distributed as sd
from skipkern.data.base import Dataset
from skipkern.diagnostics import diagnose, eval_mode
from skipkern.hessian import HessianOperator, spectral_density
from skipkern.training.config import TrainConfig

__all__ = ["evaluate", "hessian_spectrum", "fraction_fields", "spectrum_fractions", "fixed_subset", "take",
           "EpochMeasures"]


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 5000,
             loss_fn: Optional[Callable] = None, process_group: Optional[object] = None) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on x [N, in], y [N] (int64 labels), in eval mode (the
    model's mode is restored). loss_fn: (logits, y) -> batch-mean loss, default cross entropy.

    process_group: None (one process) or a process group: every rank passes the same full (x, y), takes
    its strided share, and one all-reduce of (loss sum, correct, count) gives the exact global means, the
    same on every rank (a rank with an empty share contributes zeros)."""
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"x and y must hold the same number (> 0) of samples, got {x.shape[0]} and {y.shape[0]}")
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    xs, ys = sd.shard(x, process_group), sd.shard(y, process_group)
    total, correct = 0.0, 0
    with eval_mode(model):
        for i in range(0, xs.shape[0], batch_size):
            xb, yb = xs[i:i + batch_size], ys[i:i + batch_size]
            out = model(xb)
            total += float(loss_fn(out, yb)) * xb.shape[0]
            correct += int((out.argmax(1) == yb).sum())
    total, correct, count = sd.all_reduce_sums([total, correct, xs.shape[0]], process_group)
    return total / count, correct / count


def fraction_fields(name: str, est) -> dict:
    """{name: value, name_se: stderr} of a spectral-density fraction, plus name_lower / name_upper when
    the estimate carries bounds."""
    out = {name: float(est.value), f"{name}_se": float(est.stderr)}
    for bound in ("lower", "upper"):
        if hasattr(est, bound):
            out[f"{name}_{bound}"] = float(getattr(est, bound))
    return out


def hessian_spectrum(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, num_probes: int,
                     num_steps: int, seed: Optional[int], loss_fn: Optional[Callable] = None, backend: str = "auto",
                     process_group: Optional[object] = None, progress: bool = False):
    """Hessian eigenvalue density of the mean loss on (x [N, in], y [N]) by stochastic Lanczos quadrature,
    and its fractions of degenerate (|lambda| <= eps) and negative (lambda < -eps) eigenvalues, each with
    its standard error across probes.

    Args:
        process_group: None (one process) or a process group: every rank passes the same full (x, y) and
            keeps its strided share; the result is the same on every rank.
        backend: HessianOperator backend ("auto", "fused", "generic").

    Returns:
        (density, summary): the ``SpectralDensity`` and a dict with fraction_degenerate(_se),
        fraction_negative(_se), eps, num_probes, num_steps, samples, num_params and time (seconds).
    """
    t0 = time.perf_counter()
    loss_fn = loss_fn if loss_fn is not None else F.cross_entropy
    op = HessianOperator(model, loss_fn, (sd.shard(x, process_group), sd.shard(y, process_group)),
                         backend=backend, process_group=process_group)
    dens = spectral_density(op, num_probes=num_probes, num_steps=num_steps, seed=seed, progress=progress)
    out = {**fraction_fields("fraction_degenerate", dens.fraction_degenerate(eps)),
           **fraction_fields("fraction_negative", dens.fraction_negative(eps)),
           "eps": eps, "num_probes": num_probes, "num_steps": num_steps, "samples": int(x.shape[0]),
           "num_params": int(op.shape[0])}
    out["time"] = time.perf_counter() - t0
    return dens, out


def spectrum_fractions(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, num_probes: int,
                       num_steps: int, seed: int, loss_fn: Optional[Callable] = None, save_path=None,
                       process_group: Optional[object] = None) -> dict:
    """``hessian_spectrum``'s summary; the density is also saved to ``save_path`` (by rank 0 alone under
    a process group), whose path the summary then holds under "path"."""
    dens, out = hessian_spectrum(model, x, y, eps=eps, num_probes=num_probes, num_steps=num_steps, seed=seed,
                                 loss_fn=loss_fn, process_group=process_group)
    if save_path is not None and sd.rank(process_group) == 0:
        t0 = time.perf_counter()
        Path(save_path).parent.mkdir(parents=True, exist_ok=True)
        dens.save(str(save_path))
        out["path"] = str(save_path)
        out["time"] += time.perf_counter() - t0
    return out


def fixed_subset(n_total: int, n: Optional[int], seed: int, stream: int) -> Optional[torch.Tensor]:
    """First n of a permutation from its own seeded stream (None when n covers everything)."""
    if n is None or n >= n_total:
        return None
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + stream)
    return torch.randperm(n_total, generator=g)[:n]


def take(x: torch.Tensor, idx: Optional[torch.Tensor]) -> torch.Tensor:
    return x if idx is None else x[idx.to(x.device)]


class EpochMeasures:
    """The measurements due at an epoch (evaluation, diagnostics, spectrum), on fixed seeded subsets of
    the training set: each kind draws its subset from its own stream, so they never shift the batches."""

    def __init__(self, model: nn.Module, data: Dataset, config: TrainConfig, loss_fn: Callable,
                 group: Optional[object], out: Optional[Path]):
        self.model, self.data, self.config, self.loss_fn, self.group, self.out = model, data, config, loss_fn, group, out
        n, seed = data.n_train, config.seed
        self.idx_eval = fixed_subset(n, config.train_eval_samples, seed, 1)
        self.idx_diag = fixed_subset(n, config.diag_batch, seed, 2)
        self.idx_spec = fixed_subset(n, config.spectrum_samples, seed, 3)

    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        return evaluate(self.model, x, y, self.config.eval_batch_size, self.loss_fn, self.group)

    def __call__(self, epoch: int, rec: dict, force_eval: bool) -> None:
        """Add the measurements due at ``epoch`` to its record ``rec``."""
        c, d = self.config, self.data
        if force_eval or epoch % c.eval_every == 0:
            rec["train_loss"], rec["train_acc"] = self._evaluate(take(d.x_train, self.idx_eval),
                                                                 take(d.y_train, self.idx_eval))
            if d.n_test:
                rec["test_loss"], rec["test_acc"] = self._evaluate(d.x_test, d.y_test)
        if c.diagnostics_every and epoch % c.diagnostics_every == 0:
            t0 = time.perf_counter()
            res = diagnose(self.model, take(d.x_train, self.idx_diag), take(d.y_train, self.idx_diag), self.loss_fn)
            rec["diagnostics"] = {k: v.to_dict() for k, v in res.items()}
            rec["diagnostics_time"] = time.perf_counter() - t0
        if epoch in c.spectrum_at:
            save = self.out / "spectra" / f"epoch_{epoch:04d}.json" if self.out is not None else None
            rec["spectrum"] = spectrum_fractions(
                self.model, take(d.x_train, self.idx_spec), take(d.y_train, self.idx_spec), eps=c.degenerate_eps,
                num_probes=c.spectrum_probes, num_steps=c.spectrum_steps, seed=int(c.seed) * 7919 + epoch,
                loss_fn=self.loss_fn, save_path=save, process_group=self.group)
