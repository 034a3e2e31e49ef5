#!/usr/bin/env bash
# Runs on a lent GPU machine (nvcc, CMake, no dotnet), from the repository root of the copied tree,
# after tools/device/pack.sh ran here and .device/ was carried over:
#   bash tools/device/run.sh
# 1. compiles kernels/*.cu to PTX with the machine's own nvcc (matching its driver),
# 2. runs the `Gpu` test category with REQUIRE_GPU=1 (a missing GPU fails instead of skipping),
#    loading that PTX through ENGINE_PTX_DIR,
# and writes everything to $OUT (gpu.txt, ptx.log, the TRX report and the test log).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.device/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv > "$OUT/gpu.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"

if ! { cmake -S . -B build-device -DENGINE_REQUIRE_NVCC=ON && cmake --build build-device; } > "$OUT/ptx.log" 2>&1; then
  echo "run.sh: compiling the kernels to PTX failed:"; tail -40 "$OUT/ptx.log"; exit 1
fi
ls build-device/ptx

work=$(mktemp -d)
tar -C "$work" -xJf .device/gputests.tar.xz || { echo "run.sh: .device/gputests.tar.xz missing: run tools/device/pack.sh and carry .device"; exit 1; }
ENGINE_PTX_DIR="$PWD/build-device/ptx" REQUIRE_GPU=1 TESTINGPLATFORM_TELEMETRY_OPTOUT=1 \
  "$work/gputests/Engine.Tests" --filter "TestCategory=Gpu" --report-trx --results-directory "$OUT" 2>&1 | tee "$OUT/gpu-tests.log"
code=${PIPESTATUS[0]}
echo "run.sh: Gpu tests exited with $code"
exit "$code"
