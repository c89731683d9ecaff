"""Compile-check the CUDA sources so a syntax or type error cannot land on machines without a GPU.

Every csrc/cuda/*.cu goes through nvcc for sm_80 and sm_90 (one nvcc call, both targets). Device
optimisation is off (-O0 for host, cicc and ptxas): front-end, template, PTX and ptxas errors all
still surface, in a few seconds instead of ~20 (the real build in setup.py uses -O3). The pybind11
binding (csrc/cuda/*.cpp, host code only) gets a g++ -fsyntax-only pass. Skipped when nvcc / g++ are
absent unless SKIPKERN_REQUIRE contains "cuda-compile".
"""
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from tests.utils import required_backends

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "csrc" / "cuda"
CU_SOURCES = sorted(CUDA_DIR.glob("*.cu"))
CPP_SOURCES = sorted(CUDA_DIR.glob("*.cpp"))
ARCHS = ("80", "90")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found on PATH"
        if "cuda-compile" in required_backends():
            pytest.fail(msg + " (SKIPKERN_REQUIRE contains cuda-compile)")
        pytest.skip(msg)
    return path


def _run(cmd: list, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_sources_exist():
    assert CU_SOURCES, f"no .cu files under {CUDA_DIR}"
    assert CPP_SOURCES, f"no binding .cpp under {CUDA_DIR}"


@pytest.mark.slow  # a few seconds of nvcc
@pytest.mark.parametrize("src", CU_SOURCES, ids=lambda p: p.name)
def test_nvcc_compiles(src, tmp_path):
    nvcc = _tool("nvcc")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in ARCHS]
    cmd = [nvcc, "-c", str(src), "-o", str(tmp_path / (src.stem + ".o")), "-std=c++17", *gencode,
           "--threads", "2", "-O0", "-Xcicc", "-O0", "-Xptxas", "-O0", "--expt-relaxed-constexpr",
           f"-I{CUDA_DIR}", "-Xcompiler", "-fPIC"]
    res = _run(cmd, tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{out}"
    assert "error" not in out.lower(), f"nvcc reported errors:\n{out}"
    assert (tmp_path / (src.stem + ".o")).stat().st_size > 0


@pytest.mark.slow  # a few seconds of g++ over the pybind11 headers
@pytest.mark.parametrize("src", CPP_SOURCES, ids=lambda p: p.name)
def test_binding_syntax(src, tmp_path):
    cxx = _tool("g++")
    pybind11 = pytest.importorskip("pybind11")
    cmd = [cxx, "-fsyntax-only", "-std=c++17", f"-I{pybind11.get_include()}",
           f"-I{sysconfig.get_paths()['include']}", f"-I{CUDA_DIR}", str(src)]
    res = _run(cmd, tmp_path)
    assert res.returncode == 0, f"g++ -fsyntax-only failed:\n{res.stdout}{res.stderr}"
