"""One-shot device check: build, GPU tests, benchmarks at the paper's shapes, one JSON, one table.

    bash bench/gpu_check.sh                 # on a CUDA machine (no network needed): the whole check
    bash bench/gpu_check.sh --dry-run       # anywhere: the same structure, GPU parts skipped or run as smoke
    bash bench/gpu_check.sh --parts build,tests --budget 300

Parts run in order, each in its own process with its own timeout inside a total budget (default 470 s); a
failing or timed-out part is recorded and the check goes on. Parts:
  env          device, driver, versions, commit (always)
  nvcc-sm90a   every csrc/cuda/*.cu compiled for sm_90a (needs nvcc only)
  build        pip install --no-deps --no-build-isolation -e . (the CUDA extension for sm_90a included; if that
               fails, the part fails and skipkern is built once more without it, so the rest can run)
  tests-fused  the whole-MLP kernel, the captured step, the GPU HVP, split-K / TF32 / tuning (all tests)
  tests-backends  the skip_linear grid (CUDA and Triton backends against the reference), rop_epilogue
  bench-*      bench/bench_skip_mlp.py (training step per shape, layer, whole MLP), bench/bench_hvp_gpu.py
               (HVP at k = 8 and 64 over 10k samples; spectrum with TF32/bf16 products against fp32/fp64)
The parts run in the order the targets need them, so the budget cuts the least important ones.
Without CUDA (or with --dry-run) the build is skipped, the tests part runs a CPU smoke subset, the benchmarks
run as --smoke on the CPU (the Triton interpreter for the fused kernels), and the JSON says so. Writes bench/results/gpu_check-<device>-<date>.json (and, when $OUT is set, a
copy plus the full logs under $OUT), prints the results table with the targets last. Exit status 1 when a
part failed or timed out. Without .git (a copied tree) the commit comes from SKIPKERN_GIT_COMMIT, and
``source_sha256`` (python3 bench/gpu_check.py --source-hash, on any checkout) ties the result to the code.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import RESULTS_DIR, env_info, format_table  # noqa: E402

PY = sys.executable
FUSED_TESTS = ["tests/test_skip_mlp_fused.py", "tests/test_capture.py", "tests/test_hvp_gpu.py",
               "tests/test_triton_splitk_tuning.py"]  # all of them, slow marks included (slow in the interpreter)
BACKEND_TESTS = ["tests/test_skip_linear.py", "tests/test_skip_linear_backends.py", "tests/test_rop_epilogue.py"]
SMOKE_TESTS = ["tests/test_capture.py"]
NO_COMPILE = "torch eager,skipkern mlp + CUDA graph,torch eager + CUDA graph,skipkern layers + CUDA graph,skipkern mlp"
# name, needs CUDA, timeout (s), command (a list), or None for in-process parts. Ordered by what the targets need,
# so that the total budget cuts the least important parts.
PARTS = [
    ("env", False, 30, None),
    ("nvcc-sm90a", False, 120, None),
    ("build", True, 240, [PY, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."]),
    ("tests-fused", False, 150, None),  # without CUDA: a CPU smoke subset
    ("bench-step-cifar100", False, 110, ["bench/bench_skip_mlp.py", "--part", "step", "--shape", "cifar100"]),
    ("bench-hvp", False, 80, ["bench/bench_hvp_gpu.py", "--part", "time"]),
    ("bench-layer", False, 50, ["bench/bench_skip_mlp.py", "--part", "layer"]),
    ("tests-backends", True, 120, None),
    ("hvp-precision", False, 45, ["bench/bench_hvp_gpu.py", "--part", "precision"]),
    ("bench-step-mnist1d", False, 70, ["bench/bench_skip_mlp.py", "--part", "step", "--shape", "mnist1d",
                                       "--providers", NO_COMPILE + ",torch.compile"]),
    ("bench-mlp", False, 40, ["bench/bench_skip_mlp.py", "--part", "mlp", "--shape", "mnist1d"]),
]
TARGETS = "CIFAR-100 step <= 0.1 ms and >= 2x torch.compile; HVP k=64 over 10k <= 10 ms; layer fwd+bwd >= 1.5x eager"


def _run(cmd: list, timeout: float, log: Path, env: dict) -> tuple[str, int, float]:
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the part's whole process group (pytest workers, compilers)
            proc.wait()
            return "timeout", -9, time.perf_counter() - t0
    return ("ok" if rc == 0 else "failed"), rc, time.perf_counter() - t0


def _tail(path: Path, n: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _junit(path: Path) -> dict:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return {}
    out = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "failed": []}
    for suite in root.iter("testsuite"):
        for k in ("tests", "failures", "errors", "skipped"):
            out[k] += int(suite.get(k, 0))
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            out["failed"].append(f"{case.get('classname')}::{case.get('name')}")
    return out


def _nvcc(log: Path) -> tuple[str, int, float, dict]:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "skipped (nvcc not found)", 0, 0.0, {}
    status, rc, secs, done = "ok", 0, 0.0, {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            cmd = [nvcc, "-c", str(src), "-o", f"{tmp}/{src.stem}.o", "-std=c++17",
                   "-gencode=arch=compute_90a,code=sm_90a", "-O0", "-Xcicc", "-O0", "-Xptxas", "-O0",
                   "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc' / 'cuda'}", "-Xcompiler", "-fPIC"]
            part_log = log.with_suffix(f".{src.stem}.log")
            st, r, s = _run(cmd, 100, part_log, dict(os.environ))
            log.open("a").write(_tail(part_log, 100000))
            done[src.name] = st
            secs += s
            if st != "ok":
                status, rc = "failed", r
    return status, rc, secs, {"sources": done}


def _tests_cmd(name: str, junit: Path, smoke: bool) -> list:
    files = SMOKE_TESTS if smoke else (FUSED_TESTS if name == "tests-fused" else BACKEND_TESTS)
    files = [f for f in files if (ROOT / f).exists()]
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(junit), "--timeout", "120", *files]
    if smoke or name == "tests-backends":
        cmd[3:3] = ["-m", "not slow"]
    if not smoke:
        cmd[3:3] = ["-n", "12"]  # pytest-xdist: Triton compiles the kernel variants on 12 cores
    return cmd


def run_check(args) -> dict:
    have_cuda = _cuda()
    dry = args.dry_run or not have_cuda
    mode = "gpu" if not dry else ("dry-run" if args.dry_run else "dry-run (no CUDA device found)")
    print(f"[gpu_check] mode: {mode}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", SKIPKERN_CUDA_ARCH="-gencode=arch=compute_90a,code=sm_90a",
               SKIPKERN_TUNE_CACHE=str(work_dir() / "triton-tune.json"))
    if args.tune:
        env["SKIPKERN_TRITON_AUTOTUNE"] = "1"  # the first call of each shape times the candidate configs
    if dry:
        env.setdefault("TRITON_INTERPRET", "1")
    work = work_dir()
    wanted = set(args.parts.split(",")) if args.parts else None
    start, parts, rows = time.perf_counter(), [], []
    for name, needs_cuda, timeout, cmd in PARTS:
        rec = {"name": name}
        parts.append(rec)
        if wanted is not None and name not in wanted:
            rec["status"] = "not selected"
            continue
        left = args.budget - (time.perf_counter() - start)
        if left < 5:
            rec["status"] = "skipped (out of time)"
            continue
        if needs_cuda and dry:
            rec["status"] = "skipped (dry run)" if args.dry_run else "skipped (no CUDA device)"
            continue
        log = work / f"{name}.log"
        out_json = work / f"{name}.json"
        extra: dict = {}
        if name == "env":
            rec.update(status="ok", seconds=0.0, info=_env())
            continue
        if name == "nvcc-sm90a":
            status, rc, secs, extra = _nvcc(log)
        else:
            if name.startswith("tests"):
                cmd = _tests_cmd(name, work / f"{name}.xml", dry)
            elif cmd[0].startswith("bench/"):
                cmd = [PY, *cmd, "--json", str(out_json)] + (["--smoke"] if dry else [])
            if name in args.inject_failure:
                cmd = [PY, "-c", "import sys; print('injected failure'); sys.exit(3)"]
            if name in args.inject_timeout:
                cmd, timeout = [PY, "-c", "import time; time.sleep(60)"], 2
            print(f"[gpu_check] {name}: {' '.join(cmd)} (timeout {min(timeout, left):.0f} s)", flush=True)
            status, rc, secs = _run(cmd, min(timeout, left), log, env)
            if name == "build" and status != "ok" and status != "timeout":
                # keep the rest of the check alive: the CPU extension and the Triton kernels without CUDA C++
                print("[gpu_check] build failed; building again without the CUDA extension", flush=True)
                st2, _, s2 = _run(cmd, max(5.0, min(timeout, left) - secs), log.with_suffix(".nocuda.log"),
                                  dict(env, SKIPKERN_NO_CUDA="1"))
                extra["fallback_build_without_cuda"] = st2
                log.open("a").write(_tail(log.with_suffix(".nocuda.log"), 100000))
                secs += s2
            if name.startswith("tests"):
                extra = {"junit": _junit(work / f"{name}.xml")}
            if out_json.exists():
                try:
                    part_rows = json.loads(out_json.read_text()).get("rows", [])
                    rows += [dict(r, check_part=name) for r in part_rows]
                    extra["rows"] = len(part_rows)
                except (OSError, ValueError) as exc:
                    extra["rows_error"] = str(exc)
        rec.update(status=status, returncode=rc, seconds=round(secs, 1), **extra)
        if status != "ok":
            rec["log_tail"] = _tail(log)
        print(f"[gpu_check] {name}: {status} in {secs:.1f} s", flush=True)
    logs = "\n".join(f"===== {p.name}\n{_tail(p, 10**7)}" for p in sorted(work.glob("*.log")))
    info = env_info()
    if not info.get("git_commit"):  # a copy of the tree without .git (the device machine): the caller names it
        info["git_commit"] = os.environ.get("SKIPKERN_GIT_COMMIT", "")
        info["git_dirty"] = "unknown (no .git)"
    info["source_sha256"] = source_hash()
    return {"name": "gpu_check", "mode": mode, "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - start, 1), "env": info, "parts": parts, "rows": rows,
            "targets": targets(rows), "_logs": logs}


def source_hash() -> str:
    """sha256 over the sources that ran (kernels, skipkern, csrc, bench, tests: path and bytes, sorted), so that
    a result from a copy of the tree without .git can still be matched to a commit (same hash, same code)."""
    import hashlib
    h = hashlib.sha256()
    for folder in ("kernels", "skipkern", "csrc", "bench", "tests"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in (".py", ".cpp", ".cu", ".cuh", ".h", ".sh") and "__pycache__" not in path.parts:
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


_WORK: list = []


def work_dir() -> Path:
    """This run's scratch folder (logs, part JSONs, junit files, the tuning cache)."""
    if not _WORK:
        _WORK.append(Path(tempfile.mkdtemp(prefix="gpu_check-")))
    return _WORK[0]


def _cuda() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - a broken torch is "no CUDA" for this purpose
        return False


def _env() -> dict:
    info = {}
    for key, cmd in (("nvidia_smi", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm",
                                     "--format=csv,noheader"]), ("nvcc", ["nvcc", "--version"])):
        try:
            info[key] = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()[-300:]
        except (OSError, subprocess.SubprocessError) as exc:
            info[key] = f"unavailable ({type(exc).__name__})"
    return info


def _best(rows: list, part: str, shape: str, providers: tuple) -> tuple:
    ok = [r for r in rows if r.get("part") == part and r.get("shape") == shape and r.get("provider") in providers
          and r.get("status") == "ok" and r.get("median_ms") is not None]
    if not ok:
        return None, None
    r = min(ok, key=lambda r: r["median_ms"])
    return r["median_ms"], r["provider"]


def targets(rows: list) -> list:
    """The issue's targets, evaluated on the rows (None where a row is missing)."""
    out = []
    ours, who = _best(rows, "step", "cifar100", ("skipkern mlp + CUDA graph", "skipkern layers + CUDA graph"))
    comp, _ = _best(rows, "step", "cifar100", ("torch.compile", "torch.compile reduce-overhead"))
    out.append(dict(target="CIFAR-100 training step (B 500) <= 0.100 ms", value_ms=ours, by=who,
                    met=None if ours is None else ours <= 0.100))
    out.append(dict(target="CIFAR-100 training step >= 2x torch.compile", value_ms=ours, by=who, baseline_ms=comp,
                    speedup=None if ours is None or comp is None else comp / ours,
                    met=None if ours is None or comp is None else comp / ours >= 2.0))
    hvp, who = _best(rows, "hvp", "k=64 n=10000", ("skipkern hvp-gpu", "skipkern fused"))
    out.append(dict(target="HVP k=64 over 10k samples <= 10 ms", value_ms=hvp, by=who,
                    met=None if hvp is None else hvp <= 10.0))
    layer, who = _best(rows, "layer fwd+bwd", "500x128x128", ("skipkern cuda", "skipkern triton"))
    eager, _ = _best(rows, "layer fwd+bwd", "500x128x128", ("torch eager",))
    out.append(dict(target="layer fwd+bwd (B 500, 128x128) >= 1.5x cuBLAS + eager epilogue", value_ms=layer, by=who,
                    baseline_ms=eager, speedup=None if layer is None or eager is None else eager / layer,
                    met=None if layer is None or eager is None else eager / layer >= 1.5))
    return out


def write(result: dict, json_path: str = None) -> list:
    logs = result.pop("_logs", "")
    text = json.dumps(result, indent=1, default=str) + "\n"
    paths = []
    if json_path:
        paths.append(Path(json_path))
    else:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        paths.append(RESULTS_DIR / f"gpu_check-{result['env']['device']}-{_dt.date.today().isoformat()}.json")
    if os.environ.get("OUT"):  # the device machine's return folder
        paths.append(Path(os.environ["OUT"]) / "gpu_check.json")
        (Path(os.environ["OUT"]) / "gpu_check_logs.txt").write_text(logs)
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return paths


def report(result: dict) -> str:
    lines = [f"gpu_check ({result['mode']}, {result['env'].get('device')}, {result['seconds']} s, "
             f"commit {result['env'].get('git_commit', '')[:10]})", ""]
    parts = [dict(p, why=_why(p)) for p in result["parts"]]
    lines.append(format_table(parts, [("name", "part", "s"), ("status", "status", "s"), ("seconds", "s", ".1f"),
                                      ("why", "", "s")]))
    rows = [r for r in result["rows"] if r.get("status") == "ok" and r.get("median_ms") is not None]
    prec = [dict(r, top_err=max(r.get("top_ritz_rel_err_vs_fp64") or [0.0])) for r in result["rows"]
            if r.get("part") == "hvp precision" and r.get("status") == "ok"]
    if rows:
        lines += ["", format_table(rows, [("part", "part", "s"), ("shape", "shape", "s"), ("provider", "provider", "s"),
                                          ("median_ms", "median ms", ".4f"), ("rel_err_loss", "rel err", ".1e")])]
    if prec:
        lines += ["", format_table(prec, [("provider", "HVP products", "s"), ("lambda_max", "lambda max", ".4g"),
                                          ("fraction_degenerate", "frac |l|<=1e-4 max", ".4f"),
                                          ("fraction_negative", "frac l<-1e-4 max", ".4f"),
                                          ("top_err", "top-3 Ritz rel err vs fp64", ".1e")])]
    tg = [dict(t, met={True: "MET", False: "missed", None: "n/a"}[t["met"]]) for t in result["targets"]]
    lines += ["", "targets (H200): " + TARGETS,
              format_table(tg, [("target", "target", "s"), ("value_ms", "ms", ".4f"), ("by", "by", "s"),
                                ("baseline_ms", "baseline ms", ".4f"), ("speedup", "speedup", ".2f"),
                                ("met", "", "s")])]
    return "\n".join(lines)


def _why(part: dict) -> str:
    """One line saying what went wrong in a failed part (the last error-looking line of its log)."""
    if part.get("status") not in ("failed", "timeout"):
        failed = part.get("junit", {}).get("failed", [])
        return f"{len(failed)} failed: {', '.join(failed[:3])}" if failed else ""
    lines = [ln.strip() for ln in part.get("log_tail", "").splitlines() if ln.strip()]
    err = [ln for ln in lines if "Error" in ln or "error" in ln or "FAILED" in ln or "failure" in ln]
    return ((err or lines or [""])[-1])[:100]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="one-shot GPU device check (see the module docstring)")
    ap.add_argument("--dry-run", action="store_true", help="skip the GPU parts; benchmarks as CPU smoke runs")
    ap.add_argument("--parts", default=None, help="comma-separated part names to run (default: all)")
    ap.add_argument("--budget", type=float, default=470.0, help="total seconds for all parts")
    ap.add_argument("--json", default=None, help="write the JSON here instead of bench/results/")
    ap.add_argument("--tune", action="store_true", help="time candidate tile configs per shape (slower; see "
                    "kernels/tuning.py)")
    ap.add_argument("--inject-failure", default="", help="parts replaced by a failing command (tests of this script)")
    ap.add_argument("--inject-timeout", default="", help="parts replaced by a command that times out")
    ap.add_argument("--source-hash", action="store_true", help="print the sources' sha256 and exit")
    args = ap.parse_args(argv)
    if args.source_hash:
        print(source_hash())
        return 0
    args.inject_failure = set(filter(None, args.inject_failure.split(",")))
    args.inject_timeout = set(filter(None, args.inject_timeout.split(",")))
    result = run_check(args)
    paths = write(result, args.json)
    print(report(result))
    print("wrote " + ", ".join(map(str, paths)))
    bad = [p["name"] for p in result["parts"] if p.get("status") in ("failed", "timeout")]
    if bad:
        print(f"[gpu_check] parts failed or timed out: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
