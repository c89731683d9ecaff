#!/usr/bin/env bash
# The paper-size reproduction on MNIST-1D: depth 20 (30 for BiasReg), width 128, batch 500, Adam 5e-4,
# 2000 steps, 5 seeds (20 plain nets for result 3), both init families, 50,000 training samples
# (spectra on 40,000 of them: N (C - 1) / P = 1.12, no data-rank floor). Resumable: finished runs are cached under
# results/paper_size/runs and an interrupted run continues from its last epoch, so re-running this
# script picks up where it stopped. Each experiment rewrites report.md with every result present.
# Extra arguments go to every `skipkern repro` call (e.g. --jobs 2 on an idle machine, or
# --data cifar100 --data-dir DIR --device cuda for the paper's own setting). The order runs the paper's
# results first, cheap ones before seeds (30 more nets with a Hessian spectrum each: about an hour here),
# then skip_benefit; `signal`, which only reads the other experiments' runs, runs after each long stretch.
# EXPERIMENTS="a b" runs only those.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/paper_size}
for exp in ${EXPERIMENTS:-architectures malicious skips simplified biasreg signal seeds signal skip_benefit signal}; do
  echo "== $(date -u +%FT%TZ) $exp (load: $(cut -d' ' -f1-3 /proc/loadavg))"
  nice -n 10 skipkern repro "$exp" --out "$OUT" --jobs 1 --no-progress "$@"
done
echo "== $(date -u +%FT%TZ) done"
