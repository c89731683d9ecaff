"""skipkern.ops._torch_compat, the shim over the private torch internals of the eager op path: both
branches (private API present, and missing: public fallbacks) give skip_linear the same results under
torch.func transforms, vectorized Hessians and plain eager calls; the constant marker still matches what
torch's public API sets."""
import pytest
import torch

from skipkern import backends
from skipkern.ops import _torch_compat as compat
from skipkern.ops import skip_linear
from skipkern.reference import skip_linear_composite

F64 = torch.float64


def test_private_api_is_detected_and_missing_pieces_noticed(monkeypatch):
    assert compat.functorch_api() is torch._C._functorch  # this torch has it: the private branch runs
    monkeypatch.delattr(torch._C._functorch, "peek_interpreter_stack")  # nothing may run a transform here
    assert compat.functorch_api() is None


@pytest.fixture(params=["private", "fallback"])
def branch(request, monkeypatch):
    if request.param == "fallback":
        monkeypatch.setattr(compat, "_FUNCTORCH", None)  # as on a torch without torch._C._functorch
    return request.param


def _layer():
    g = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*s, generator=g, dtype=F64) for s in ((4, 5), (5, 5), (5,)))
    q = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))[0]
    return x, w, b, q


def test_is_transformed(branch):
    x = torch.randn(3, dtype=F64)
    assert not compat.is_transformed(x) and not compat.in_functorch_transform(x)
    seen = []

    def f(t):
        seen.append((compat.is_transformed(t), compat.in_functorch_transform(t)))
        return t.sum()

    torch.func.grad(f)(x)
    torch.func.vmap(f)(torch.randn(2, 3, dtype=F64))
    assert seen == [(True, True), (True, True)]


def test_skip_linear_under_transforms(branch):
    x, w, b, q = _layer()
    ref = lambda xx, ww: skip_linear_composite(xx, ww, b, q, "tanh").square().sum()  # noqa: E731
    f = lambda xx, ww: skip_linear(xx, ww, b, q, "tanh", backend="auto").square().sum()  # noqa: E731
    for a, e in zip(torch.func.grad(f, argnums=(0, 1))(x, w), torch.func.grad(ref, argnums=(0, 1))(x, w)):
        torch.testing.assert_close(a, e)
    assert backends.last_used("skip_linear") == "torch"  # the composite ran inside the transform
    xs = torch.randn(3, 4, 5, dtype=F64)
    torch.testing.assert_close(torch.func.vmap(lambda t: skip_linear(t, w, b, "identity", "gelu"))(xs),
                               skip_linear_composite(xs, w, b, "identity", "gelu"))
    _, tangent = torch.func.jvp(lambda t: skip_linear(t, w, b, None, "tanh"), (x,), (torch.ones_like(x),))
    _, tangent_ref = torch.func.jvp(lambda t: skip_linear_composite(t, w, b, None, "tanh"), (x,),
                                    (torch.ones_like(x),))
    torch.testing.assert_close(tangent, tangent_ref)


def test_vectorized_hessian_and_plain_eager(branch):
    """A vmapped backward (hessian(vectorize=True)) routes through the custom op; a plain call through the
    resolved kernel backend."""
    x, w, b, q = _layer()
    kernel = "cpp" if backends.can_run("cpp", "skip_linear", "cpu", F64)[0] else "torch"
    f = lambda ww: skip_linear(x, ww, b, q, "tanh", backend=kernel).square().sum()  # noqa: E731
    ref = lambda ww: skip_linear_composite(x, ww, b, q, "tanh").square().sum()  # noqa: E731
    torch.testing.assert_close(torch.autograd.functional.hessian(f, w, vectorize=True),
                               torch.autograd.functional.hessian(ref, w))
    y = skip_linear(x, w, b, q, "relu", backend=kernel)
    assert backends.last_used("skip_linear") == kernel
    torch.testing.assert_close(y, skip_linear_composite(x, w, b, q, "relu"))


def test_constant_marker_matches_the_public_api(monkeypatch):
    marked = torch.compiler.assume_constant_result(lambda: 1)  # the public API (imports torch._dynamo)
    assert getattr(marked, compat.CONSTANT_MARKER) is True

    def fn():
        return 2

    monkeypatch.setattr(compat, "_dynamo_loaded", lambda: False)  # private branch: set the marker by hand
    assert compat.assume_constant_result(fn) is fn and getattr(fn, compat.CONSTANT_MARKER) is True
    calls = []
    monkeypatch.setattr(torch.compiler, "assume_constant_result", lambda f: calls.append(f) or f)
    monkeypatch.setattr(compat, "_dynamo_loaded", lambda: True)  # public branch once dynamo is loaded
    assert compat.assume_constant_result(fn) is fn and calls == [fn]
