"""Signal propagation: how a net's forward signal looks at its current weights (at initialisation, after
training). Before comparing architectures, see whether they start alike: a net whose logits are huge
starts at a loss far above ln(C) with a saturated softmax, one whose signal vanishes starts at ln(C)
with no information in its logits; a difference in accuracy after a short budget may then say more
about the scale than about the architecture.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from skipkern.diagnostics.capture import capture_layers, eval_mode

__all__ = ["signal_propagation", "flag_initial_loss", "FLAG_FACTOR"]

# An initial loss above FLAG_FACTOR * ln(C) is flagged: far above the ln(C) of uninformative logits.
FLAG_FACTOR = 2.0


def flag_initial_loss(loss: float, num_classes: int, factor: float = FLAG_FACTOR) -> bool:
    """True when ``loss`` exceeds ``factor`` * ln(num_classes) (or is not finite)."""
    return not (math.isfinite(loss) and loss <= factor * math.log(num_classes))


@torch.no_grad()
def signal_propagation(model: nn.Module, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                       num_classes: Optional[int] = None) -> dict:
    """Forward-signal statistics of ``model`` on the batch x [B, in] (eval mode, no gradients).

    Returns a JSON-friendly dict:
        input_rms: root mean square of x over samples and features.
        hidden_rms [L]: root mean square of each hidden representation h_l (after skips).
        hidden_ratio [L]: hidden_rms / input_rms (1 = the input's scale).
        dead_fraction [L]: units of layer l never active on the batch (pre-skip act(z) <= 0).
        logit_std: standard deviation of the logits over samples and classes; logit_rms likewise.
        loss: mean cross entropy on (x, y) when y is given; ln_c = ln(num_classes);
        loss_flag: loss > FLAG_FACTOR * ln(C) (``flag_initial_loss``).
    """
    layers = capture_layers(model, x)
    with eval_mode(model):  # BatchNorm uses (and keeps) its running statistics
        logits = model(x)
    xr = float(x.double().pow(2).mean().sqrt())
    h_rms = [float(L.hidden.pow(2).mean().sqrt()) for L in layers]
    dead = [float((~(L.act > 0).any(0)).double().mean()) for L in layers]
    lg = logits.double()
    c = int(num_classes if num_classes is not None else logits.shape[1])
    out = {"input_rms": xr, "hidden_rms": h_rms,
           "hidden_ratio": [h / xr if xr > 0 else math.nan for h in h_rms], "dead_fraction": dead,
           "mean_dead_fraction": float(np.mean(dead)) if dead else math.nan,
           "logit_std": float(lg.std()), "logit_rms": float(lg.pow(2).mean().sqrt()), "ln_c": math.log(c),
           "batch": int(x.shape[0])}
    if y is not None:
        loss = float(F.cross_entropy(lg, y.to(lg.device)))
        out.update(loss=loss, loss_flag=flag_initial_loss(loss, c), accuracy=float((lg.argmax(1) == y).double().mean()))
    return out
