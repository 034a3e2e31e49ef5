#!/usr/bin/env bash
# Runs on a lent GPU machine (nvcc, CMake, PyTorch, no dotnet), from the repository root of the copied
# tree, after tools/device/pack.sh ran here and .device/ was carried over:
#   bash tools/device/run.sh            (writes to $OUT, or .device/out)
# 1. compiles kernels/*.cu to PTX with the machine's own nvcc (matching its driver);
# 2. runs the GPU parity suite (`Gpu` test category) with REQUIRE_GPU=1, loading that PTX;
# 3. engine kernels-bench (every kernel on the TinyLlama-1.1B and Llama-3-8B shapes);
# 4. PyTorch on the same shapes, in the same call: its matrix-vector products (tools/device/torch_gemv.py)
#    and the jobs of the speculative kernels — sort-based sampling, SDPA with a tree mask, acceptance
#    in torch ops (tools/device/torch_spec.py);
# 5. engine bench --device cuda on a 1.1B-shape model (synthesized here: F16, then Q8_0 and Q4_0), with
#    and without --cuda-graphs, and spec-bench --verify-cost on it (a whole device step of N tokens
#    against one decode step);
# 6. engine spec-bench --device cuda on stories260K: recycle, lookup and draft (the Q8_0 model as the
#    draft) against plain decoding on the same device, greedy and at temperature 0.8.
# Each step's failure is recorded and the next still runs. Results in $OUT (the device tool brings back
# 8 files): gpu.txt, run.log, gpu-tests.log and the TRX report, kernels-bench.jsonl, torch.jsonl,
# bench.jsonl, spec-bench.jsonl.
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
ptxlog=$(mktemp)
if ! { cmake -S . -B build-device -DENGINE_REQUIRE_NVCC=ON && cmake --build build-device -j; } > "$ptxlog" 2>&1; then
  echo "run.sh: compiling the kernels failed:"; tail -60 "$ptxlog"; exit 1
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

step "PyTorch on the same shapes: matrix-vector products, then the speculative kernels' jobs"
python3 tools/device/torch_gemv.py > "$OUT/torch.jsonl" || { echo "torch_gemv.py failed"; status=1; }
python3 tools/device/torch_spec.py >> "$OUT/torch.jsonl" || { echo "torch_spec.py failed"; status=1; }
grep -E "sort_sample|sdpa_tree|accept_" "$OUT/torch.jsonl" | head -30

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
# The F16 KV cache (half the bytes attention reads), at a long context where attention matters.
for cache in f32 f16; do
  "$bin/engine" bench -m "$models/tl1b-q4_0.gguf" --device cuda --cache-type $cache -p 4096 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
done
cat "$OUT/bench.jsonl"

step "verification cost on the 1.1B shape: a device step of N tokens against one decode step"
: > "$OUT/spec-bench.jsonl"
"$bin/engine" spec-bench -m "$models/tl1b-f16.gguf" --device cuda --verify-cost 1,2,4,8,16,32,64 -r 9 --json >> "$OUT/spec-bench.jsonl" || status=1
rm -rf "$models"

step "spec-bench --device cuda on stories260K"
stories=.device/shared/models/stories260K/stories260K.gguf
draft=$(mktemp -d)/stories-q8_0.gguf
"$bin/engine" quantize "$stories" "$draft" Q8_0 || status=1
prompts=$(mktemp)
printf '%s\n' "Once upon a time, there was a little dog" "Lily and Ben went to the park" "The cat sat on the mat and" \
  "One day, a big bird flew over the house" > "$prompts"
for temp in 0 0.8; do
  "$bin/engine" spec-bench -m "$stories" --device cuda --prompts "$prompts" --method all --draft-model "$draft" -n 256 --temp "$temp" --json \
    >> "$OUT/spec-bench.jsonl" || status=1
done
cat "$OUT/spec-bench.jsonl"

echo "run.sh: finished with status $status"
exit $status
