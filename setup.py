"""Build script for skipkern.

Builds one CPU extension, ``skipkern._C`` (csrc/*.cpp, pybind11 + OpenMP, raw pointers, no torch
headers), always; and ``skipkern._C_cuda`` (csrc/cuda/*.cu + its binding) only where CUDA is usable:
``nvcc`` found and either a GPU visible (``nvidia-smi -L`` succeeds) or ``SKIPKERN_FORCE_CUDA=1``.
``SKIPKERN_NO_CUDA=1`` skips it. ``SKIPKERN_CPU_ARCH`` overrides ``-march`` (default ``native``).

Triton kernels live in the top-level ``kernels/`` folder and ship as ``skipkern.kernels``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension
from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _cuda_wanted() -> tuple[bool, str]:
    if os.environ.get("SKIPKERN_NO_CUDA") == "1":
        return False, "SKIPKERN_NO_CUDA=1"
    nvcc = shutil.which("nvcc") or (
        os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc") if os.environ.get("CUDA_HOME") else None
    )
    if not nvcc or not os.path.exists(nvcc):
        return False, "nvcc not found"
    if os.environ.get("SKIPKERN_FORCE_CUDA") == "1":
        return True, "SKIPKERN_FORCE_CUDA=1"
    try:
        ok = subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return (True, "GPU visible") if ok else (False, "no GPU visible (set SKIPKERN_FORCE_CUDA=1 to build anyway)")


def _cpu_flags() -> list[str]:
    march = os.environ.get("SKIPKERN_CPU_ARCH", "native")
    flags = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno"]
    if march:
        flags.append(f"-march={march}")
    return flags


def _cuda_home(nvcc: str) -> Path:
    """The CUDA toolkit root: CUDA_HOME/CUDA_PATH, else nvcc's grandparent, else /usr/local/cuda(-*).
    Checked by the presence of include/cuda_runtime.h (/usr/local/bin/nvcc can be a wrapper script)."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                  str(Path(nvcc).resolve().parent.parent), "/usr/local/cuda",
                  *sorted(str(p) for p in Path("/usr/local").glob("cuda-*"))[::-1]]
    for c in candidates:
        if c and (Path(c) / "include" / "cuda_runtime.h").exists():
            return Path(c)
    raise RuntimeError(f"CUDA headers not found (looked in {[c for c in candidates if c]}); set CUDA_HOME")


class BuildExt(build_ext):
    """build_ext that compiles .cu sources with nvcc and links them with cudart."""

    def build_extension(self, ext):
        cu_sources = [s for s in ext.sources if s.endswith(".cu")]
        if not cu_sources:
            return super().build_extension(ext)
        nvcc = shutil.which("nvcc") or os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc")
        cuda_home = _cuda_home(nvcc)
        build_tmp = Path(self.build_temp) / "cuda"
        build_tmp.mkdir(parents=True, exist_ok=True)
        arch = os.environ.get("SKIPKERN_CUDA_ARCH", "-gencode=arch=compute_80,code=sm_80 -gencode=arch=compute_90,code=sm_90")
        objects = []
        for src in cu_sources:
            obj = build_tmp / (Path(src).stem + ".o")
            cmd = [nvcc, "-c", src, "-o", str(obj), "-O3", "-std=c++17", "-Xcompiler", "-fPIC",
                   "--expt-relaxed-constexpr", *arch.split(), "-Icsrc/cuda"]
            print(" ".join(cmd), flush=True)
            subprocess.check_call(cmd, cwd=ROOT)
            objects.append(str(obj))
        ext.sources = [s for s in ext.sources if not s.endswith(".cu")]
        ext.extra_objects = list(ext.extra_objects or []) + objects
        ext.library_dirs = list(ext.library_dirs or []) + [str(cuda_home / "lib64"), str(cuda_home / "lib")]
        ext.libraries = list(ext.libraries or []) + ["cudart"]
        # rpath: the module finds libcudart without LD_LIBRARY_PATH.
        ext.extra_link_args = list(ext.extra_link_args or []) + [
            f"-Wl,-rpath,{d}" for d in (cuda_home / "lib64", cuda_home / "lib") if d.exists()]
        ext.include_dirs = list(ext.include_dirs or []) + [str(cuda_home / "include")]
        return super().build_extension(ext)


cpu_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").glob("*.cpp"))
ext_modules = [
    Pybind11Extension(
        "skipkern._C",
        cpu_sources,
        include_dirs=["csrc"],
        extra_compile_args=_cpu_flags(),
        extra_link_args=["-fopenmp"],
        cxx_std=17,
    )
]

want_cuda, why = _cuda_wanted()
print(f"[skipkern setup] CUDA extension: {'building' if want_cuda else 'skipped'} ({why})", file=sys.stderr)
cuda_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cu"))
cuda_bind = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc" / "cuda").glob("*.cpp"))
if want_cuda and cuda_sources:
    ext_modules.append(
        Pybind11Extension("skipkern._C_cuda", cuda_bind + cuda_sources, include_dirs=["csrc/cuda"], cxx_std=17)
    )

setup(
    packages=[
        "skipkern", "skipkern.ops", "skipkern.nn", "skipkern.backends", "skipkern.hessian",
        "skipkern.diagnostics", "skipkern.data", "skipkern.experiments", "skipkern.kernels",
        "skipkern.training", "skipkern.cli",
    ],
    package_dir={"skipkern": "skipkern", "skipkern.kernels": "kernels"},
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExt},
    zip_safe=False,
)
