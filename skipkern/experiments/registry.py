"""The named experiment recipes and their configurations.

Each recipe has three configurations:
    tiny   seconds, for tests (depth 3, width 8, a few steps, 64 samples);
    quick  ``skipkern repro all --quick``: MNIST-1D on a 2-core CPU in under 10 minutes in total;
    full   the paper's sizes (depth 20, width 128; depth 30 for BiasReg; Adam 5e-4, batch 500), on
           MNIST-1D with enough samples that the spectra have no data-rank floor, or on CIFAR-10/100
           given --data / --data-dir (with --device cuda).
Budgets are optimiser steps (``steps``), the same unit in every mode. Every deep recipe runs each init
family in ``inits``: "glorot" (the paper's Glorot-normal scheme) and "scaled" (scale-controlled: O(1)
hidden scale and logits at any depth; ``skipkern.nn.init``). The deep recipes share one base
configuration per mode, so ``architectures``, ``skips``, ``malicious``, ``seeds`` and
``skip_benefit`` train the same plain and residual runs once (see ``runs.py``). Step budgets, seeds
and spectrum settings are ours (the paper does not give them): every one is a parameter here, and
``--set key=value`` overrides them. What each result predicts is registered in ``predictions.py``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

from skipkern.experiments import (architectures, biasreg, malicious, seeds, signal, simplified, skip_benefit,
                                  skips)
from skipkern.experiments.common import Context

__all__ = ["Recipe", "RECIPES", "ORDER", "get_recipe", "recipe_config", "DEEP_BASE"]

# Shared deep-net settings per mode. spectra: "init" and/or "end" (Hessian densities of the data loss on
# spectrum_samples fixed training samples; N (C - 1) must exceed P for no data-rank floor: with width 32,
# depth 20, P = 21,706 and 6,000 samples give N (C - 1) / P = 2.5; at the paper's width 128, P = 320,266
# and 40,000 of the 50,000 training samples (CIFAR-100's training-set size) give 1.12).
DEEP_BASE = {
    "tiny": dict(depth=3, width=8, steps=6, n_train=64, n_test=32, seeds=[0, 1], lr=5e-4, batch_size=32,
                 inits=["glorot", "scaled"], eval_points=3, train_eval_samples=None, diag_points=1, diag_batch=32,
                 spectra=["init", "end"], spectrum_probes=2, spectrum_steps=6, spectrum_samples=64),
    # quick: depth 10 and 300 steps so that all of `repro all --quick` fits 10 minutes of a 2-core CPU
    # (measured: depth 20 and 600 steps took ~30 min); P = 11,146 and 3,000 spectrum samples give
    # N (C - 1) / P = 2.4.
    "quick": dict(depth=10, width=32, steps=300, n_train=6000, n_test=1000, seeds=[0, 1, 2, 3, 4], lr=5e-4,
                  batch_size=500, inits=["glorot", "scaled"], eval_points=6, train_eval_samples=2000, diag_points=2,
                  diag_batch=500, spectra=["init", "end"], spectrum_probes=3, spectrum_steps=20,
                  spectrum_samples=3000),
    "full": dict(depth=20, width=128, steps=2000, n_train=50000, n_test=5000, seeds=[0, 1, 2, 3, 4], lr=5e-4,
                 batch_size=500, inits=["glorot", "scaled"], eval_points=10, train_eval_samples=5000, diag_points=2,
                 diag_batch=1000, spectra=["init", "end"], spectrum_probes=2, spectrum_steps=16,
                 spectrum_samples=40000),
}

_SPECIFIC = {
    # resolve_fractions: checkpoints ("init", "end") whose degenerate fraction is also resolved adaptively
    # after training (spectra.resolved_fraction: ~1000 Hessian-vector products per run and checkpoint at
    # quick sizes, so off by default in quick mode; `--set resolve_fractions='["init","end"]'` adds them
    # to finished runs without retraining).
    "architectures": {"tiny": dict(resolve_fractions=["end"], resolve_tol=0.3, resolve_max_matvecs=60),
                      "quick": dict(resolve_fractions=[], resolve_tol=0.1, resolve_max_matvecs=1500),
                      "full": dict(resolve_fractions=[], resolve_tol=0.1, resolve_max_matvecs=1500)},
    "skips": {"tiny": dict(degenerate_fractions=[0.5]),
              "quick": dict(degenerate_fractions=[0.5, 0.9]),
              "full": dict(degenerate_fractions=[0.5, 0.9])},
    "malicious": {"tiny": {}, "quick": {}, "full": {}},
    "seeds": {"tiny": dict(n_nets=3), "quick": dict(n_nets=20), "full": dict(n_nets=20)},
    "biasreg": {"tiny": dict(depth=4, search_candidates=2, search_steps=4, search_seed=0),
                # quick: the shared depth (the paper's 30 in full mode) so that plain and residual are the shared runs
                "quick": dict(depth=10, search_candidates=2, search_steps=100, search_seed=0),
                "full": dict(depth=30, search_candidates=4, search_steps=800, search_seed=0)},
    "skip_benefit": {"tiny": dict(depths=[2, 3], gains=[1.0]),
                     # quick: 150 steps (depth-50 nets dominate the quick budget; the gap opens early)
                     "quick": dict(depths=[5, 10, 20, 30, 50], gains=[1.0], seeds=[0, 1], steps=150,
                                   share_runs=False),
                     "full": dict(depths=[5, 10, 20, 30, 50], gains=[1.0], seeds=[0, 1, 2])},
}


@dataclass(frozen=True)
class Recipe:
    """A named experiment: what it tests, how to run it, its configurations per mode."""

    name: str
    description: str
    results: tuple
    run_fn: Callable[[Context, dict], dict]
    configs: dict

    def config(self, mode: str, overrides: Optional[dict] = None) -> dict:
        if mode not in self.configs:
            raise ValueError(f"mode must be one of {sorted(self.configs)}, got {mode!r}")
        cfg = copy.deepcopy(self.configs[mode])
        for k, v in (overrides or {}).items():
            if k not in cfg:
                raise ValueError(f"{self.name}: unknown config key {k!r}; keys are {sorted(cfg)}")
            cfg[k] = v
        return cfg

    def run(self, ctx: Context, overrides: Optional[dict] = None) -> dict:
        return self.run_fn(ctx, self.config(ctx.mode, overrides))


def _deep(name: str) -> dict:
    return {m: dict(copy.deepcopy(DEEP_BASE[m]), **copy.deepcopy(_SPECIFIC[name][m])) for m in DEEP_BASE}


_NONE = {"tiny": {}, "quick": {}, "full": {}}

RECIPES = {
    "simplified": Recipe("simplified", "two-hidden-unit teacher-student model, plain vs skip: plateaus, (h, z) "
                         "trajectories, gradient flow field", (0,), simplified.run, simplified.CONFIGS),
    "architectures": Recipe("architectures", "plain vs residual vs hyper-residual: training accuracy, Hessian "
                            "degenerate/negative fractions, per-layer diagnostics and condition numbers", (1, 2, 7),
                            architectures.run, _deep("architectures")),
    "skips": Recipe("skips", "identity vs orthogonal vs degenerate skips vs plain", (5,), skips.run, _deep("skips")),
    "malicious": Recipe("malicious", "residual vs maliciously initialised residual (W <- W - I) vs plain", (6,),
                        malicious.run, _deep("malicious")),
    "seeds": Recipe("seeds", "many plain nets: singularity measures vs final training accuracy", (3,), seeds.run,
                    _deep("seeds")),
    "biasreg": Recipe("biasreg", "plain, BiasL2Reg, BiasReg (random search), BiasReg + one BN layer, residual",
                      (4,), biasreg.run, _deep("biasreg")),
    "skip_benefit": Recipe("skip_benefit", "where do skips help? accuracy gap (residual/orthogonal - plain) over depth "
                           "and initial scale", (), skip_benefit.run, _deep("skip_benefit")),
    "signal": Recipe("signal", "signal propagation of every condition at init and after training; flags runs "
                     "starting above 2 ln C (reads the other experiments' results, trains nothing)", (), signal.run,
                     copy.deepcopy(_NONE)),
}
# Run order of ``repro all``: architectures first, so later recipes reuse its plain/residual runs;
# signal last, since it summarises the runs of the others.
ORDER = ("simplified", "architectures", "skips", "malicious", "seeds", "biasreg", "skip_benefit", "signal")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ValueError listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(ORDER)} (or 'all')")
    return RECIPES[name]


def recipe_config(name: str, mode: str) -> dict:
    return get_recipe(name).config(mode)


# The experiments after the neighbouring papers (connectivity: Wang et al. 2020; symmetry: Orhan 2017; depth:
# Oyedotun et al. 2022). ``repro all`` runs them after the paper's recipes and before ``signal``; symmetry and
# depth build on this module's DEEP_BASE (symmetry's plain/residual runs are the shared ones).
from skipkern.experiments import connectivity, depth, symmetry  # noqa: E402

RECIPES.update({
    "connectivity": Recipe("connectivity", "loss barriers between independently trained nets vs the width m of a "
                           "two-layer skip branch, linear and Bezier paths, final-loss spread (after Wang et al. 2020)",
                           (), connectivity.run, copy.deepcopy(connectivity.CONFIGS)),
    "symmetry": Recipe("symmetry", "binary-weight toy enumerated (plain / adjacent / DenseNet-style skips): functions, "
                       "class sizes, local minima; BiasReg beside skips in deep nets (after Orhan 2017)", (),
                       symmetry.run, symmetry.configs(DEEP_BASE)),
    "depth": Recipe("depth", "condition number and numerical rank of every hidden representation, plain vs residual, "
                    "10 to 164 layers, and a conv PlainNet vs ResNet (after Oyedotun et al. 2022)", (), depth.run,
                    depth.configs(DEEP_BASE)),
})
ORDER = (tuple(n for n in ORDER if n != "signal") + ("connectivity", "symmetry", "depth")
         + (("signal",) if "signal" in ORDER else ()))
