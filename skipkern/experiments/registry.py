"""The named experiment recipes and their configurations.

Each recipe has three configurations:
    tiny   seconds, for tests (depth 3, width 8, 1 epoch, 64 samples);
    quick  ``skipkern repro all --quick``: MNIST-1D on a 2-core CPU in under 10 minutes in total;
    full   the paper's sizes (depth 20, width 128; depth 30 for BiasReg; Adam 5e-4, batch 500), for
           a GPU, on MNIST-1D or on CIFAR-10/100 given --data / --data-dir.
The deep-net recipes share one base configuration per mode, so that ``architectures``, ``skips``,
``malicious`` and ``seeds`` train the same plain and residual runs once (see ``runs.py``). Epoch
counts, seeds and spectrum settings are ours (the paper does not give them): every one is a
parameter here.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

from skipkern.experiments import architectures, biasreg, malicious, seeds, simplified, skips
from skipkern.experiments.common import Context

__all__ = ["Recipe", "RECIPES", "ORDER", "get_recipe", "recipe_config", "DEEP_BASE"]

# Shared deep-net settings per mode. spectrum_at: epochs (0 = init) of the Hessian densities.
DEEP_BASE = {
    "tiny": dict(depth=3, width=8, epochs=1, n_train=64, n_test=32, seeds=[0, 1], lr=5e-4, batch_size=32,
                 diagnostics_every=1, diag_batch=32, spectrum_at=[0, 1], spectrum_probes=2, spectrum_steps=6,
                 spectrum_samples=32, degenerate_eps=1e-3, degenerate_rel=1e-3),
    "quick": dict(depth=20, width=64, epochs=30, n_train=4000, n_test=1000, seeds=[0, 1, 2], lr=5e-4,
                  batch_size=500, diagnostics_every=10, diag_batch=500, spectrum_at=[0, 30], spectrum_probes=3,
                  spectrum_steps=30, spectrum_samples=500, degenerate_eps=1e-3, degenerate_rel=1e-3),
    "full": dict(depth=20, width=128, epochs=100, n_train=None, n_test=None, seeds=[0, 1, 2, 3, 4], lr=5e-4,
                 batch_size=500, diagnostics_every=10, diag_batch=1000, spectrum_at=[0, 5, 25, 50, 100],
                 spectrum_probes=16, spectrum_steps=80, spectrum_samples=2000, degenerate_eps=1e-3, degenerate_rel=1e-3),
}

_SPECIFIC = {
    "architectures": {"tiny": {}, "quick": {}, "full": {}},
    "skips": {"tiny": dict(degenerate_fractions=[0.5], equal_tol=0.03),
              "quick": dict(degenerate_fractions=[0.5, 0.9], equal_tol=0.03),
              "full": dict(degenerate_fractions=[0.25, 0.5, 0.75, 0.9], equal_tol=0.03)},
    "malicious": {"tiny": dict(slight_tol=0.05), "quick": dict(slight_tol=0.05), "full": dict(slight_tol=0.05)},
    "seeds": {"tiny": dict(n_nets=3, primary_measure="fraction_degenerate_rel", alpha=0.05),
              "quick": dict(n_nets=8, primary_measure="fraction_degenerate_rel", alpha=0.05),
              "full": dict(n_nets=30, primary_measure="fraction_degenerate_rel", alpha=0.05)},
    "biasreg": {"tiny": dict(depth=4, search_candidates=2, search_epochs=1, search_seed=0, close_tol=0.05),
                "quick": dict(depth=30, seeds=[0, 1], search_candidates=4, search_epochs=10, search_seed=0,
                              close_tol=0.05),
                "full": dict(depth=30, search_candidates=20, search_epochs=30, search_seed=0, close_tol=0.05)},
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
}
# Run order of ``repro all``: architectures first, so later recipes reuse its plain/residual runs.
ORDER = ("simplified", "architectures", "skips", "malicious", "seeds", "biasreg")


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``; ValueError listing the known ones otherwise."""
    if name not in RECIPES:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(ORDER)} (or 'all')")
    return RECIPES[name]


def recipe_config(name: str, mode: str) -> dict:
    return get_recipe(name).config(mode)
