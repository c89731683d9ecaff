"""Test set-up: the Triton interpreter on machines without a GPU, and SKIPKERN_REQUIRE.

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
SKIPKERN_REQUIRE=cpp,triton (CI) turns "backend unavailable, skipped" into a failure.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The fp32 tolerances assume IEEE dots; on a GPU the Triton kernels default to TF32 (tests of TF32 set it).
os.environ.setdefault("SKIPKERN_TRITON_TF32", "0")

import pytest  # noqa: E402

import skipkern  # noqa: E402


def pytest_report_header(config):
    lines = [f"skipkern {skipkern.__version__}, torch {torch.__version__}, "
             f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '')}, "
             f"SKIPKERN_REQUIRE={os.environ.get('SKIPKERN_REQUIRE', '')}"]
    for b in skipkern.backends.available():
        lines.append(f"  backend {b.name:7s} {'yes' if b.available else 'no '}  {b.reason}")
    return lines


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test (small shapes run 10-30x slower when two threads fight
    over two busy cores); restores the previous count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
