"""SkipLinear and SkipMLP refuse bad arguments in their constructors, with a message naming the
argument and the accepted values (not a ZeroDivisionError, a torch.empty failure or a late failure on
the first forward)."""
from __future__ import annotations

import pytest

from skipkern.nn import SkipLinear, SkipMLP


@pytest.mark.parametrize("make, error, needle", [
    (lambda: SkipLinear(0, 0), ValueError, "in_features must be a positive int, got 0"),
    (lambda: SkipLinear(-1, 4), ValueError, "in_features must be a positive int, got -1"),
    (lambda: SkipLinear(4, 0, skip="none"), ValueError, "out_features must be a positive int, got 0"),
    (lambda: SkipLinear(4.0, 4), ValueError, "in_features must be a positive int, got 4.0"),
    (lambda: SkipLinear(4, 4, activation="foo"), ValueError, "activation must be one of"),
    (lambda: SkipLinear(4, 4, backend="foo"), ValueError, "backend must be 'auto' or one of"),
    (lambda: SkipLinear(4, 4, skip="degenerate", degenerate_fraction=1.5), ValueError, "degenerate_fraction"),
    (lambda: SkipLinear(4, 4, bias="yes"), TypeError, "bias must be True or False"),
    (lambda: SkipMLP(4, width=True, depth=2, out_features=3), ValueError, "width must be a positive int, got True"),
    (lambda: SkipMLP(4, width=8, depth=0, out_features=3), ValueError, "depth must be a positive int, got 0"),
    (lambda: SkipMLP(4, 8, 2, 3, activation="foo"), ValueError, "activation must be one of"),
    (lambda: SkipMLP(4, 8, 2, 3, backend="foo"), ValueError, "backend must be 'auto' or one of"),
])
def test_bad_constructor_arguments(make, error, needle):
    with pytest.raises(error) as e:
        make()
    assert needle in str(e.value)


def test_good_arguments_still_build():
    assert SkipLinear(3, 5, skip="orthogonal", activation="gelu", backend="torch").weight.shape == (5, 3)
    assert SkipMLP(4, 8, 2, 3, arch="degenerate", degenerate_fraction=1, backend="auto").depth == 2
