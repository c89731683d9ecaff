"""Init families end to end: ``skipkern train --init`` builds the chosen family, records it in the
checkpoint, and refuses to resume a run of the other family; the signal-propagation measurement
tells the families apart (initial loss flag)."""
from __future__ import annotations

import math

import pytest
import torch

from skipkern.diagnostics.propagation import flag_initial_loss, signal_propagation
from skipkern.nn import SkipMLP
from tests.test_cli import TINY_TRAIN, run_cli


def test_signal_propagation_flags_the_saturated_start():
    x = torch.randn(256, 40, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(1))
    glorot = signal_propagation(SkipMLP(40, 32, 20, 10, arch="residual", seed=0), x, y)
    scaled = signal_propagation(SkipMLP(40, 32, 20, 10, arch="residual", seed=0, init="scaled"), x, y)
    assert glorot["loss_flag"] and glorot["loss"] > 100 and glorot["hidden_ratio"][-1] > 50
    assert not scaled["loss_flag"] and scaled["loss"] < 2 * math.log(10)
    assert len(scaled["hidden_ratio"]) == 20 and len(scaled["dead_fraction"]) == 20
    assert scaled["ln_c"] == pytest.approx(math.log(10))
    assert flag_initial_loss(float("nan"), 10) and not flag_initial_loss(2.0, 10)


@pytest.mark.slow
def test_train_cli_init_family_is_recorded_and_checked_on_resume(tmp_path):
    out = tmp_path / "run"
    p = run_cli("train", "--init", "scaled", "--arch", "plain", "--out", str(out), *TINY_TRAIN)
    assert p.returncode == 0, p.stderr
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert ckpt["model_config"]["init"] == "scaled"
    p = run_cli("train", "--init", "glorot", "--arch", "plain", "--out", str(out), *TINY_TRAIN)
    assert p.returncode != 0 and "init" in p.stderr
