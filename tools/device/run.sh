#!/usr/bin/env bash
# Runs on a lent GPU machine (nvcc, CMake, PyTorch, no dotnet), from the repository root of the copied
# tree, after tools/device/pack.sh ran here and .device/ was carried over:
#   bash tools/device/run.sh            (writes to $OUT, or .device/out)
# 1. compiles kernels/*.cu to PTX with the machine's own nvcc (matching its driver);
# 2. runs the GPU parity suite (`Gpu` test category) with REQUIRE_GPU=1, loading that PTX;
# 3. engine kernels-bench (every kernel on the TinyLlama-1.1B and Llama-3-8B shapes);
# 4. PyTorch's matrix-vector products on the same shapes, in the same call (tools/device/torch_gemv.py);
# 5. engine bench --device cuda on a 1.1B-shape model (synthesized here: F16, then Q8_0 and Q4_0), with
#    and without --cuda-graphs.
# Each step's failure is recorded and the next still runs. Results in $OUT: gpu.txt, run.log,
# gpu-tests.log and the TRX report, kernels-bench.jsonl, torch-gemv.jsonl, bench.jsonl.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/.device/out}
mkdir -p "$OUT"
log="$OUT/run.log"
exec > >(tee -a "$log") 2>&1
status=0
step() { echo "== $* ($(date +%T))"; }

nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm,clocks.max.mem --format=csv > "$OUT/gpu.txt" 2>&1 \
  || echo "nvidia-smi failed" >> "$OUT/gpu.txt"
cat "$OUT/gpu.txt"

step "PTX with $(command -v nvcc || echo 'no nvcc on PATH')"
if ! { cmake -S . -B build-device -DENGINE_REQUIRE_NVCC=ON && cmake --build build-device -j; } > "$OUT/ptx.log" 2>&1; then
  echo "run.sh: compiling the kernels failed:"; tail -40 "$OUT/ptx.log"; exit 1
fi
ls build-device/ptx | tr '\n' ' '; echo

work=$(mktemp -d)
tar -C "$work" -xJf .device/gputests.tar.xz || { echo "run.sh: .device/gputests.tar.xz missing: run tools/device/pack.sh and carry .device"; exit 1; }
bin="$work/gputests"
export ENGINE_PTX_DIR="$PWD/build-device/ptx" ENGINE_SHARED="$PWD/.device/shared" TESTINGPLATFORM_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1

# cuBLAS for the prefill products: the CUDA toolkit's, or the one PyTorch ships.
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $(python3 -c 'import nvidia.cublas, os; print(os.path.join(os.path.dirname(nvidia.cublas.__file__), "lib"))' 2>/dev/null); do
  lib=$(ls "$dir"/libcublas.so* 2>/dev/null | head -1)
  if [[ -n "$lib" ]]; then export ENGINE_CUBLAS="$lib" LD_LIBRARY_PATH="$dir:${LD_LIBRARY_PATH:-}"; break; fi
done
echo "cuBLAS: ${ENGINE_CUBLAS:-not found (batches run on the gemv kernels)}"

step "GPU parity suite (REQUIRE_GPU=1)"
REQUIRE_GPU=1 "$bin/Engine.Tests" --filter "TestCategory=Gpu" --report-trx --results-directory "$OUT" \
  > "$OUT/gpu-tests.log" 2>&1
code=$?; echo "Gpu tests exited with $code"; grep -E "failed|total:|succeeded:|skipped:" "$OUT/gpu-tests.log" | tail -40
(( code == 0 )) || status=1

step "kernels-bench"
"$bin/engine" kernels-bench --json > "$OUT/kernels-bench.jsonl" || status=1
tail -5 "$OUT/kernels-bench.jsonl"

step "PyTorch matrix-vector products on the same shapes"
python3 tools/device/torch_gemv.py > "$OUT/torch-gemv.jsonl" || { echo "torch_gemv.py failed"; status=1; }

step "engine bench --device cuda on the 1.1B shape"
models=$(mktemp -d)
# BENCH_SHAPE overrides the shape (a dry run on a machine without a GPU uses a tiny one).
"$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf ${BENCH_SHAPE:---dim 2048 --layers 22 --heads 32 --kv-heads 4 --ffn 5632} \
  --type F16 "$models/tl1b-f16.gguf" || status=1
for t in Q8_0 Q4_0; do "$bin/engine" quantize "$models/tl1b-f16.gguf" "$models/tl1b-${t,,}.gguf" "$t" --threads 16 || status=1; done
: > "$OUT/bench.jsonl"
for t in f16 q8_0 q4_0; do
  for graphs in "" --cuda-graphs; do # launches one by one, then each decode step as a CUDA graph: same call, same machine
    "$bin/engine" bench -m "$models/tl1b-$t.gguf" --device cuda $graphs -p 512 -n 128 -r 5 --json >> "$OUT/bench.jsonl" || status=1
  done
done
cat "$OUT/bench.jsonl"
rm -rf "$models"

echo "run.sh: finished with status $status"
exit $status
