"""Every kind of symmetric operator (torch tensor, numpy array, scipy LinearOperator and sparse matrix,
HessianOperator, any object with matmat) in lanczos, spectral_density, trace and top_eigenvalues,
against the exact spectrum; device and dtype inferred, float64 where nothing says otherwise."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import aslinearoperator
from torch import nn

from skipkern.hessian import HessianOperator, lanczos, spectral_density, top_eigenvalues, trace
from skipkern.hessian.adapters import as_operator
from skipkern.nn import SkipMLP

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _matrix(P=60, seed=0):
    ev = torch.cat([torch.zeros(10, dtype=F64), torch.linspace(-2, 3, P - 12, dtype=F64),
                    torch.tensor([9.0, 25.0], dtype=F64)])
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=torch.Generator().manual_seed(seed), dtype=F64))
    A = (Q * ev) @ Q.T
    return (A + A.T) / 2, ev


class NumpyMatmat:  # an object with shape and a numpy matmat, nothing else
    def __init__(self, A):
        self.A, self.shape = A, A.shape

    def matmat(self, V):
        if isinstance(V, torch.Tensor):
            raise TypeError("numpy only")
        return self.A @ V


class TorchMatmat:  # shape, dtype, device and a torch matmat
    def __init__(self, A):
        self.A, self.shape, self.dtype, self.device = A, tuple(A.shape), A.dtype, A.device

    def matmat(self, V):
        return self.A @ V


def _kinds():
    A, ev = _matrix()
    An = A.numpy()
    return ev, {"tensor": A, "tensor32": A.float(), "numpy": An, "scipy": aslinearoperator(An),
                "sparse": sp.csr_matrix(An), "numpy_matmat": NumpyMatmat(An), "torch_matmat": TorchMatmat(A)}


@pytest.mark.parametrize("kind", ["tensor", "tensor32", "numpy", "scipy", "sparse", "numpy_matmat", "torch_matmat"])
def test_every_operator_kind(kind):
    ev, kinds = _kinds()
    op = kinds[kind]
    wrapped = as_operator(op)
    assert wrapped.dtype == (torch.float32 if kind == "tensor32" else F64) and wrapped.device.type == "cpu"
    tol = 1e-5 if kind == "tensor32" else 1e-9
    res = lanczos(op, 60, num_probes=2, seed=0)  # P steps: the Ritz values are the eigenvalues
    nodes = torch.sort(res.ritz()[0][0]).values
    assert abs(float(nodes[-1]) - 25.0) < 25 * tol and abs(float(nodes[0]) + 2.0) < 2 * tol + 1e-9
    d = spectral_density(op, num_probes=4, num_steps=60, seed=0, progress=False)
    assert abs(d.moment(1).value - float(ev.mean())) <= 4 * d.moment(1).stderr + 1e-4
    top = top_eigenvalues(op, 2, seed=0)
    torch.testing.assert_close(top, torch.tensor([25.0, 9.0], dtype=F64), rtol=tol, atol=0)
    est = trace(op, 30, method="hutch++", seed=0)
    assert abs(est.value - float(ev.sum())) <= 4 * est.stderr + 1e-3


def test_hessian_operator_and_its_scipy_view_agree():
    m = SkipMLP(4, 5, 2, 3, arch="residual", seed=0, dtype=F64)
    g = torch.Generator().manual_seed(0)
    op = HessianOperator(m, nn.CrossEntropyLoss(), (torch.randn(12, 4, generator=g, dtype=F64),
                                                    torch.randint(0, 3, (12,), generator=g)))
    assert as_operator(op) is op
    a = top_eigenvalues(op, 2, seed=1)
    b = top_eigenvalues(op.to_scipy(), 2, seed=1)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_operator_kind_errors():
    with pytest.raises(TypeError, match="matmat"):
        lanczos([[1.0, 0.0], [0.0, 1.0]], 2)
    with pytest.raises(ValueError, match="square"):
        as_operator(aslinearoperator(np.ones((3, 4))))
    with pytest.raises(ValueError, match="symmetric"):
        as_operator(np.array([[1.0, 2.0], [0.0, 1.0]]))
    assert as_operator(np.eye(3, dtype=np.int64)).dtype == F64  # integers: float64

    class Bad(TorchMatmat):
        def matmat(self, V):
            return V[:-1]
    with pytest.raises(ValueError, match="returned shape"):
        trace(Bad(torch.eye(4, dtype=F64)), 2, seed=0)
