"""Loss landscapes between trained networks: paths, losses along them and their barriers.

    from skipkern.landscape import connect
    res = connect(net_a, net_b, F.mse_loss, {"train": (x, y), "test": (xt, yt)}, method="bezier")
    print(res.barrier, res.test_barrier)          # max along the path - mean of the two ends

``connect`` (one pair) and ``connect_many`` (K pairs of one architecture, batched) support straight
lines, Bezier curves trained as Garipov et al. (2018) do and AutoNEB chains (Draxler et al. 2018).
"""
from skipkern.landscape.connect import METHODS, PathResult, barrier, connect, connect_many, fit_bezier, profile
from skipkern.landscape.curves import BezierPath, LinearPath, Path, PolyChain
from skipkern.landscape.neb import fit_autoneb
from skipkern.landscape.params import LossEvaluator, ParamLayout

__all__ = ["connect", "connect_many", "PathResult", "barrier", "profile", "fit_bezier", "fit_autoneb", "METHODS",
           "Path", "LinearPath", "BezierPath", "PolyChain", "LossEvaluator", "ParamLayout"]
