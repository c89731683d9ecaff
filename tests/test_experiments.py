"""Experiment recipes in tiny configurations (seconds each): the files they write and their fields,
the statistics behind the verdicts, the simplified model's gradients against autograd, and the
report. One module-scoped output folder is shared, so the deep recipes reuse each other's runs."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from skipkern.experiments import (INCONCLUSIVE, INVALID, NOT_REPRODUCED, ORDER, PREDICTIONS, RECIPES, REPRODUCED,
                                  Context, compare, correlation, get_recipe, stats, verdict)
from skipkern.experiments import simplified as S
from skipkern.experiments.runs import RunSpec, deep_spec, schedule
from skipkern.report import write_report

VERDICTS = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, INVALID}


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return Context(out=tmp_path_factory.mktemp("repro"), mode="tiny", progress=False)


def _check_common(ctx: Context, name: str) -> dict:
    d = ctx.out / name
    res = json.loads((d / "results.json").read_text())  # strict JSON: inf/nan are strings
    assert res["experiment"] == name
    assert {"config", "seeds", "summary", "runs", "findings", "figures", "elapsed_s"} <= set(res)
    for stem in res["figures"]:
        for ext in ("png", "svg"):
            assert (d / f"{stem}.{ext}").stat().st_size > 1000, f"{stem}.{ext} missing or empty"
    with open(d / f"{name}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(res["runs"]) > 0
    expected = set(RECIPES[name].results)
    assert {f["result"] for f in res["findings"]} == expected
    for f in res["findings"]:
        assert f["verdict"] in VERDICTS and f["evidence"] and f["claim"]
        keys = [o["key"] for o in f["outcomes"]]
        assert keys == [p.key for p in PREDICTIONS if p.result == f["result"]]  # every registered prediction judged
        for o in f["outcomes"]:
            assert o["verdict"] in VERDICTS and o["rule"]
    if name not in ("simplified", "signal"):  # both init families, side by side
        assert {f["family"] for f in res["findings"]} == ({"glorot", "scaled"} if expected else set())
    return res


# ------------------------------------------------------------------------------------- statistics
def test_stats_and_two_sided_compare():
    s = stats([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert compare("a", [0.9, 0.91, 0.92], "b", [0.5, 0.52, 0.51], ">").outcome == "holds"
    assert compare("a", [0.5, 0.52, 0.51], "b", [0.9, 0.91, 0.92], ">").outcome == "fails"
    assert compare("a", [0.5, 0.7, 0.6], "b", [0.6, 0.5, 0.62], ">").outcome == "unclear"
    assert compare("a", [0.60, 0.61, 0.605], "b", [0.60, 0.61, 0.605], "~", tol=0.03).outcome == "holds"
    assert compare("a", [0.50, 0.51, 0.505], "b", [0.62, 0.63, 0.625], "~", tol=0.03).outcome == "fails"
    c = [compare("a", [1.0, 1.01], "b", [0.0, 0.01], ">")]
    assert verdict(c) == REPRODUCED
    assert verdict(c + [compare("a", [0.0, 0.01], "b", [1.0, 1.01], ">")]) == NOT_REPRODUCED
    assert verdict([compare("a", [0.5, 0.7], "b", [0.6, 0.5], ">")]) == INCONCLUSIVE
    for rel in (">=", "<=", "!="):  # one-sided rules hold when nothing happened: refused
        with pytest.raises(ValueError, match="relation"):
            compare("a", [1.0], "b", [0.0], rel)


def test_schedule_counts_steps():
    spec = RunSpec(arch="plain", depth=3, width=4, seed=0, steps=25, batch_size=10, eval_points=4, diag_points=2,
                   spectra=("init", "end"))
    plan = schedule(spec, n_train=40)  # 4 steps per epoch: 7 epochs, the last one partial
    assert plan["epochs"] == 7 and plan["steps_per_epoch"] == 4
    assert 7 % plan["eval_every"] == 0 and 7 % plan["diagnostics_every"] == 0
    assert plan["spectra"] == ["init", "end"]
    assert schedule(spec, n_train=400)["epochs"] == 1  # more data, same steps


def test_correlation_matches_scipy_conventions():
    x = np.arange(10.0)
    r = correlation(x, -2 * x + 1)
    assert r["n"] == 10 and r["spearman_r"] == pytest.approx(-1.0) and r["pearson_r"] == pytest.approx(-1.0)
    r = correlation([1.0, 2.0, float("nan"), 4.0], [2.0, 1.0, 5.0, 0.0])
    assert r["n"] == 3
    assert math.isnan(correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["spearman_r"])  # constant input


# -------------------------------------------------------------------------------- simplified model
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("activation", ["erf", "relu"])
def test_simplified_gradients_match_autograd(skip, activation):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 4, generator=g, dtype=torch.float64)
    y = torch.randn(50, generator=g, dtype=torch.float64)
    J = torch.randn(3, 2, 4, generator=g, dtype=torch.float64).requires_grad_()
    w = torch.randn(3, 2, generator=g, dtype=torch.float64).requires_grad_()
    loss, dJ, dw = S.loss_and_grads(J.detach(), w.detach(), x, y, skip, activation)
    phi, _ = S.features(J, x, skip, activation)
    ref = 0.5 * (((phi * w[:, None, :]).sum(-1) - y) ** 2).mean(1)
    gJ, gw = torch.autograd.grad(ref.sum(), (J, w))
    torch.testing.assert_close(loss, ref.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dJ, gJ, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dw, gw, rtol=1e-10, atol=1e-12)


def test_simplified_fisher_nullity_on_overlap_line():
    """J1 = J2: the plain model loses the w1 - w2 direction on top of the d J-directions (w2 dJ1 =
    w1 dJ2) that both models lose; the skip keeps w1, w2 identifiable."""
    d = 3
    x = torch.randn(200, d, dtype=torch.float64)
    J1 = torch.randn(1, d, dtype=torch.float64)
    J = torch.stack([J1, J1], 1)
    w = torch.tensor([[0.7, 1.3]], dtype=torch.float64)
    assert int(S.fisher_nullity(J, w, x, False, "erf")) == d + 1
    assert int(S.fisher_nullity(J, w, x, True, "erf")) == d
    Jr = torch.randn(1, 2, d, dtype=torch.float64)  # generic point: full rank
    assert int(S.fisher_nullity(Jr, w, x, False, "erf")) == 0


@pytest.mark.slow
def test_simplified_recipe(ctx):
    res = get_recipe("simplified").run(ctx)
    _check_common(ctx, "simplified")
    assert set(res["summary"]) == {"plain", "skip"}
    for v in ("plain", "skip"):
        assert {"median_escape_step", "near_line_share", "fisher_nullity_overlap"} <= set(res["summary"][v])
    f = res["findings"][0]
    assert f["numbers"]["fisher_nullity_overlap"]["plain"][0] > f["numbers"]["fisher_nullity_overlap"]["skip"][0]


# ----------------------------------------------------------------------------------- deep recipes
def test_runspec_key_ignores_label_and_spec_sharing(ctx):
    cfg = get_recipe("architectures").config("tiny")
    a, b = deep_spec(cfg, "plain", 0, "glorot"), deep_spec(cfg, "plain", 0, "glorot", label="other")
    assert a.key(ctx) == b.key(ctx)
    assert a.key(ctx) != deep_spec(cfg, "plain", 1, "glorot").key(ctx)
    assert a.key(ctx) != deep_spec(cfg, "plain", 0, "scaled").key(ctx)  # the init family is part of the identity
    assert deep_spec(get_recipe("skips").config("tiny"), "plain", 0, "glorot").key(ctx) == a.key(ctx)  # shared runs
    assert isinstance(a, RunSpec) and a.spectra == tuple(cfg["spectra"]) and a.steps == cfg["steps"]


@pytest.mark.slow
def test_architectures_recipe(ctx):
    res = get_recipe("architectures").run(ctx)
    _check_common(ctx, "architectures")
    assert {(r["family"], r["condition"]) for r in res["runs"]} == {
        (f, a) for f in ("glorot", "scaled") for a in ("plain", "residual", "hyper_residual")}
    assert len(res["runs"]) == 6 * len(res["seeds"])
    for r in res["runs"]:
        assert 0.0 <= r["final_train_acc"] <= 1.0
        for when in ("init", "end"):
            lo, v, hi = (r[f"{when}_fraction_degenerate{s}"] for s in ("_lower", "", "_upper"))
            assert 0.0 <= lo <= v + 1e-12 and v <= hi + 1e-12 <= 1.0 + 1e-12
    folder = next(p for p in (ctx.out / "runs").iterdir() if p.name.startswith("glorot-plain-"))
    run = json.loads((folder / "record.json").read_text())
    cfg = get_recipe("architectures").config("tiny")
    assert run["history"][-1]["step"] == cfg["steps"]  # the budget is steps
    assert "condition_numbers" in run["history"][0]["diagnostics"]
    assert {"init", "end"} == set(run["spectra"]) and run["spectra"]["end"]["rms"] > 0
    sig = run["signal"]
    assert len(sig["init"]["hidden_ratio"]) == cfg["depth"] and sig["init"]["loss"] > 0
    assert {"glorot", "scaled"} == set(res["signal"]) and set(res["gates"]) == {"glorot", "scaled"}
    by = {(f["result"], f["family"]): f for f in res["findings"]}
    assert set(by[(7, "glorot")]["numbers"]) == {"init", "final"}
    assert any(s.startswith("architectures_density_") for s in res["figures"])
    # the tiny config resolves the end-of-training fraction adaptively, cached beside the run's spectra
    res2 = by[(2, "scaled")]["numbers"]["resolved"]["end"]
    for d in (d for runs in res2.values() for d in runs):
        assert d["lower"] - 1e-9 <= d["value"] <= d["upper"] + 1e-9 and d["num_matvecs"] > 0
    assert any((ctx.out / "runs").glob("*/spectra/resolved_end_tau*.json"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["skips", "malicious", "seeds", "biasreg", "skip_benefit"])
def test_other_recipes(ctx, name):
    res = get_recipe(name).run(ctx)
    _check_common(ctx, name)
    conds = {r["condition"] for r in res["runs"]}
    expected = {"skips": {"plain", "residual", "orthogonal", "degenerate_0.5"},
                "malicious": {"residual", "malicious", "plain"}, "seeds": {"plain"},
                "biasreg": {"plain", "biasl2reg", "biasreg", "biasreg_bn", "residual"},
                "skip_benefit": {f"{a}@depth{d}@gain1" for a in ("plain", "residual", "orthogonal") for d in (2, 3)}}
    assert conds == expected[name]
    if name == "seeds":
        corr = res["findings"][0]["numbers"]["correlations"]
        assert {"spearman_r", "spearman_low", "spearman_high", "pearson_r", "n"} <= set(corr["dead_fraction"])
        assert len(res["runs"]) == 2 * get_recipe("seeds").config("tiny")["n_nets"]
    if name == "biasreg":
        assert set(res["chosen"]) == {"glorot", "scaled"} and len(res["search"]["glorot"]) == 2
        assert sum(r["chosen"] for r in res["search"]["glorot"]) == 1
        assert res["bn_layer"] == get_recipe("biasreg").config("tiny")["depth"] // 2
    if name == "skip_benefit":
        assert res["sections"] and (ctx.out / name / "gaps.csv").is_file()


@pytest.mark.slow
def test_report_after_all_recipes(ctx):
    """Runs after the recipe tests (same module-scoped folder): every result has a verdict line."""
    for name in ORDER:
        if not (ctx.out / name / "results.json").is_file():
            get_recipe(name).run(ctx)
    path = write_report(ctx.out, total_s=12.0)
    text = path.read_text()
    for k in range(1, 8):
        assert f"| {k} |" in text
    assert "not run" not in text
    for needed in ("Glorot init (the paper's)", "scaled init (scale-controlled)", "## Sanity gates",
                   "## Signal propagation", "## Hessian eigenvalue densities", "Where do skips help?"):
        assert needed in text, needed
    summary = json.loads((ctx.out / "summary.json").read_text())
    assert [(r["result"], r["family"]) for r in summary["results"]][:2] == [(1, "glorot"), (1, "scaled")]
    assert all(r["verdict"] in VERDICTS for r in summary["results"])
    sig = json.loads((ctx.out / "signal" / "results.json").read_text())
    assert sig["sections"] and "flagged_runs" in sig
    for line in text.splitlines():  # every linked figure exists
        if line.startswith("!["):
            rel = line[line.index("(") + 1:line.index(")")]
            assert (ctx.out / rel).is_file(), rel


def test_unknown_recipe_and_config_key():
    with pytest.raises(ValueError, match="unknown experiment 'nope'"):
        get_recipe("nope")
    with pytest.raises(ValueError, match="unknown config key"):
        get_recipe("architectures").config("tiny", {"not_a_key": 1})
    with pytest.raises(ValueError, match="mode"):
        Context(out="x", mode="huge")
