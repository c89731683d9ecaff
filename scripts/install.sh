#!/usr/bin/env bash
# Install skipkern (editable) on a fresh machine without pulling a CUDA torch.
#   bash scripts/install.sh          # package + runtime deps
#   bash scripts/install.sh --test   # also the test extras (pytest, triton, ...)
# torch is installed first and pinned through a constraints file, so nothing later upgrades it.
# SKIPKERN_TORCH overrides the torch pin (default 2.13.0, the CPU wheel on this machine kind).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC="torch==${SKIPKERN_TORCH:-2.13.0}"
CONSTRAINTS=$(mktemp)
echo "$TORCH_SPEC" > "$CONSTRAINTS"
if ! $PY -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '${SKIPKERN_TORCH:-2.13.0}' else 1)" 2>/dev/null; then
  $PY -m pip install -q "$TORCH_SPEC"
fi
$PY -m pip install -q -c "$CONSTRAINTS" "setuptools>=61" wheel "pybind11>=2.10"
EXTRAS=""
if [[ "${1:-}" == "--test" ]]; then EXTRAS="[test]"; fi
# --no-build-isolation: the build uses the pybind11/setuptools just installed, never a fresh torch.
$PY -m pip install -q -c "$CONSTRAINTS" --no-build-isolation -e ".${EXTRAS}"
$PY -c "import skipkern; print('skipkern', skipkern.__version__, 'installed; backends:', ', '.join(b.name for b in skipkern.backends.available() if b.available))"
