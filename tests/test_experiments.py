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

from skipkern.experiments import (INCONCLUSIVE, NOT_REPRODUCED, ORDER, RECIPES, REPRODUCED, Context, compare,
                                  correlation, get_recipe, stats, verdict)
from skipkern.experiments import simplified as S
from skipkern.experiments.runs import RunSpec, deep_spec
from skipkern.report import write_report

VERDICTS = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}


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
    return res


# ------------------------------------------------------------------------------------- statistics
def test_stats_and_compare():
    s = stats([1.0, 2.0, 3.0, float("nan")])
    assert s["n"] == 3 and s["mean"] == 2.0 and s["std"] == pytest.approx(1.0)
    assert compare("a", [0.9, 0.91, 0.92], "b", [0.5, 0.52, 0.51], ">").outcome == "holds"
    assert compare("a", [0.5, 0.52, 0.51], "b", [0.9, 0.91, 0.92], ">").outcome == "fails"
    assert compare("a", [0.5, 0.7, 0.6], "b", [0.6, 0.5, 0.62], ">").outcome == "unclear"
    assert compare("a", [0.60, 0.61], "b", [0.62, 0.60], "~", tol=0.03).outcome == "holds"
    assert compare("a", [0.50, 0.51], "b", [0.62, 0.63], "~", tol=0.03).outcome == "fails"
    assert compare("a", [0.58], "b", [0.60], ">=", tol=0.05).outcome == "holds"
    c = [compare("a", [1.0, 1.01], "b", [0.0, 0.01], ">")]
    assert verdict(c) == REPRODUCED
    assert verdict(c + [compare("a", [0.0, 0.01], "b", [1.0, 1.01], ">")]) == NOT_REPRODUCED
    assert verdict([compare("a", [0.5, 0.7], "b", [0.6, 0.5], ">")]) == INCONCLUSIVE
    with pytest.raises(ValueError, match="relation"):
        compare("a", [1.0], "b", [0.0], "!=")


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
    a, b = deep_spec(cfg, "plain", 0), deep_spec(cfg, "plain", 0, label="other")
    assert a.key(ctx) == b.key(ctx)
    assert a.key(ctx) != deep_spec(cfg, "plain", 1).key(ctx)
    assert deep_spec(get_recipe("skips").config("tiny"), "plain", 0).key(ctx) == a.key(ctx)  # shared runs
    assert isinstance(a, RunSpec) and a.spectrum_at == tuple(cfg["spectrum_at"])


def test_architectures_recipe(ctx):
    res = get_recipe("architectures").run(ctx)
    _check_common(ctx, "architectures")
    assert {r["condition"] for r in res["runs"]} == {"plain", "residual", "hyper_residual"}
    assert len(res["runs"]) == 3 * len(res["seeds"])
    for r in res["runs"]:
        assert 0.0 <= r["final_train_acc"] <= 1.0
        assert 0.0 <= r["mean_fraction_degenerate_rel"] <= 1.0  # spectra at epochs 0 and 1
        assert r["mean_spectral_scale"] > 0
    run = json.loads((ctx.out / "runs").joinpath(
        next(p.name for p in (ctx.out / "runs").iterdir() if p.name.startswith("plain-")), "record.json").read_text())
    epochs = [h["epoch"] for h in run["history"]]
    assert epochs == [0, 1]
    assert "condition_numbers" in run["history"][0]["diagnostics"]
    assert {"fraction_degenerate", "fraction_degenerate_rel", "spectral_scale"} <= set(run["history"][-1]["spectrum"])
    by = {f["result"]: f for f in res["findings"]}
    assert set(by[7]["numbers"]["singular_layers"]) == {"init", "final"}


@pytest.mark.parametrize("name", ["skips", "malicious", "seeds", "biasreg"])
def test_other_recipes(ctx, name):
    res = get_recipe(name).run(ctx)
    _check_common(ctx, name)
    conds = {r["condition"] for r in res["runs"]}
    expected = {"skips": {"plain", "residual", "orthogonal", "degenerate_0.5"},
                "malicious": {"residual", "malicious", "plain"}, "seeds": {"plain"},
                "biasreg": {"plain", "biasl2reg", "biasreg", "biasreg_bn", "residual"}}[name]
    assert conds == expected
    if name == "seeds":
        corr = res["findings"][0]["numbers"]["correlations"]
        assert {"spearman_r", "pearson_r", "n"} <= set(corr[res["findings"][0]["numbers"]["primary"]])
        assert len(res["runs"]) == get_recipe("seeds").config("tiny")["n_nets"]
    if name == "biasreg":
        assert {"mu", "sigma", "lam"} <= set(res["chosen"]) and len(res["search"]) == 2
        assert res["bn_layer"] == get_recipe("biasreg").config("tiny")["depth"] // 2


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
    summary = json.loads((ctx.out / "summary.json").read_text())
    assert [r["result"] for r in summary["results"]][:7] == list(range(1, 8))
    assert all(r["verdict"] in VERDICTS for r in summary["results"])
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
