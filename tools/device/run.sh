#!/usr/bin/env bash
# Runs on a lent GPU machine (nvcc, CMake, PyTorch, no dotnet), from the repository root of the copied
# tree, after tools/device/pack.sh ran here and .device/ was carried over:
#   bash tools/device/run.sh                     (writes to $OUT, or .device/out)
#   STAGES="bench8b families" bash tools/device/run.sh    (a second call: one call must fit the tool's 10 minutes)
# Stages (STAGES, default "tests kernels torch bench verify spec"):
#   tests    the GPU parity suite (`Gpu` test category) with REQUIRE_GPU=1, on PTX compiled here with the
#            machine's own nvcc (matching its driver) — the PTX is compiled whatever the stages;
#   kernels  engine kernels-bench: every kernel on the TinyLlama-1.1B and Llama-3-8B shapes, the fused
#            decode kernels beside the separate launches they replace;
#   torch    PyTorch on the same shapes, in the same call: its matrix-vector products (torch_gemv.py) and
#            the jobs of the speculative kernels — sort-based sampling, SDPA with a tree mask, acceptance
#            in torch ops (torch_spec.py);
#   bench    engine bench --device cuda on a 1.1B-shape model synthesized here (F16, Q8_0, Q4_0, Q4_K_M):
#            fused (the default), with --cuda-graphs, and --unfused (F16, Q4_0) for the fusion's A/B;
#            a 4096-token prompt over F32 and F16 caches;
#   verify   spec-bench --verify-cost on the 1.1B shape (a device step of N tokens against one decode step);
#   spec     spec-bench on stories260K: recycle, lookup and draft (the Q8_0 model as the draft) against
#            plain decoding on the same device, greedy and at temperature 0.8;
#   bench8b  engine bench on the Llama-3-8B shape in Q8_0 and Q4_K_M (synthesized here), prompt 512 and 4096.
#   families engine bench (Q4_K_M, prompt 512 and 4096) on the Gemma 2 2B, Gemma 3 1B and Qwen3 0.6B shapes:
#            sliding-window layers, soft caps, GeGLU, 256-wide heads, per-head q/k norms on the device.
#   moe      engine bench on a Mixtral-shape MoE (8 experts, top-2, Q4_0 and Q8_0; llama.cpp as the peer) and a
#            BlockFFN shape at TLS 0.8 / CLS(8) 0.7: pp8 (an 8-token chunk, what verification runs) and tg,
#            chunk-sparse against --dense-ffn on the same weights, plus spec-bench --verify-cost.
#   strategies engine bench --strategy / --sampler-chain on a 110M-shape Q4_0 model (synthesized here): each
#            decoding strategy's time per token against greedy on the device (beams, candidates, guidance
#            rows in one pass: where extra rows cost little), and the host sampler chain; into bench.jsonl.
#   serve    tools/bench/serve-load --device cuda on a 110M-shape Q4_0 model (synthesized here): 16
#            streaming clients against one (continuous batching on the device), a cached ~1,000-token
#            system prompt against the first, a 64-client soak of 30 s, then again with --spec 8; output into serve-load.txt
#            (appended to run.log, which comes back).
# A peer in the same call: with LLAMA_BENCH set to a llama-bench binary (llama.cpp's CUDA build, built in
# the device call from a carried source tree — nothing of it lives in this repository), the bench stages
# run it on the very files they bench, with and without flash attention, into bench.jsonl.
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
STAGES=" ${STAGES:-tests kernels torch bench verify spec} "
want() { [[ $STAGES == *" $1 "* ]]; }
# llama.cpp's llama-bench on a file, as JSON lines into bench.jsonl (default and flash attention).
peer() {
  [[ -n ${LLAMA_BENCH:-} && -x ${LLAMA_BENCH:-} ]] || return 0
  for fa in 0 1; do "$LLAMA_BENCH" -m "$1" -p "$2" -n "$3" -r "$4" -ngl 99 -fa $fa -o jsonl >> "$OUT/bench.jsonl" || status=1; done
}

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

if want tests; then
  step "GPU parity suite (REQUIRE_GPU=1)"
  REQUIRE_GPU=1 "$bin/Engine.Tests" --filter "TestCategory=Gpu" --report-trx --results-directory "$OUT" \
    > "$OUT/gpu-tests.log" 2>&1
  code=$?; echo "Gpu tests exited with $code"; grep -E "failed|total:|succeeded:|skipped:" "$OUT/gpu-tests.log" | tail -40
  (( code == 0 )) || status=1
fi

if want kernels; then
  step "kernels-bench"
  "$bin/engine" kernels-bench --json > "$OUT/kernels-bench.jsonl" || status=1
  tail -5 "$OUT/kernels-bench.jsonl"
fi

if want torch; then
  step "PyTorch on the same shapes: matrix-vector products, then the speculative kernels' jobs"
  python3 tools/device/torch_gemv.py > "$OUT/torch.jsonl" || { echo "torch_gemv.py failed"; status=1; }
  python3 tools/device/torch_spec.py >> "$OUT/torch.jsonl" || { echo "torch_spec.py failed"; status=1; }
  grep -E "sort_sample|sdpa_tree|accept_" "$OUT/torch.jsonl" | head -30
fi

models=$(mktemp -d)
touch "$OUT/bench.jsonl" "$OUT/spec-bench.jsonl"
if want bench || want verify; then
  step "the 1.1B shape"
  # BENCH_SHAPE overrides the shape (a dry run on a machine without a GPU uses a tiny one).
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf ${BENCH_SHAPE:---dim 2048 --layers 22 --heads 32 --kv-heads 4 --ffn 5632} \
    --type F16 "$models/tl1b-f16.gguf" || status=1
fi
if want bench; then
  for t in Q8_0 Q4_0 Q4_K_M; do "$bin/engine" quantize "$models/tl1b-f16.gguf" "$models/tl1b-${t,,}.gguf" "$t" --threads 16 || status=1; done
  step "engine bench --device cuda on the 1.1B shape"
  for t in f16 q8_0 q4_0 q4_k_m; do
    variants=("" --cuda-graphs) # the fused kernels launched one by one, then each decode step as a CUDA graph
    [[ $t == f16 || $t == q4_0 ]] && variants+=(--unfused)
    for v in "${variants[@]}"; do
      "$bin/engine" bench -m "$models/tl1b-$t.gguf" --device cuda $v -p 512 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
    done
    peer "$models/tl1b-$t.gguf" 512 128 3
  done
  # A 4096-token prompt, over the F32 and the (default) F16 cache.
  for cache in f32 f16; do
    "$bin/engine" bench -m "$models/tl1b-q4_0.gguf" --device cuda --cache-type $cache -p 4096 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
  done
  peer "$models/tl1b-q4_0.gguf" 4096 128 3
  cat "$OUT/bench.jsonl"
fi

if want verify; then
  step "verification cost on the 1.1B shape: a device step of N tokens against one decode step"
  "$bin/engine" spec-bench -m "$models/tl1b-f16.gguf" --device cuda --verify-cost 1,2,4,8,16,32,64 -r 9 --json >> "$OUT/spec-bench.jsonl" || status=1
fi
rm -f "$models"/tl1b-*.gguf

if want spec; then
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
fi

if want bench8b; then
  step "engine bench --device cuda on the Llama-3-8B shape"
  for t in Q8_0 Q4_K_M; do
    "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf ${BENCH8B_SHAPE:---dim 4096 --layers 32 --heads 32 --kv-heads 8 --ffn 14336} \
      --type $t "$models/l8b-${t,,}.gguf" || status=1
    "$bin/engine" bench -m "$models/l8b-${t,,}.gguf" --device cuda -p 512 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
    "$bin/engine" bench -m "$models/l8b-${t,,}.gguf" --device cuda --cuda-graphs -p 512 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
    peer "$models/l8b-${t,,}.gguf" 512 128 3
  done
  "$bin/engine" bench -m "$models/l8b-q4_k_m.gguf" --device cuda -p 4096 -n 128 -r 2 --json >> "$OUT/bench.jsonl" || status=1
  peer "$models/l8b-q4_k_m.gguf" 4096 128 2
  rm -f "$models"/l8b-*.gguf
  cat "$OUT/bench.jsonl"
fi
if want families; then
  step "engine bench --device cuda on the Gemma 2 2B, Gemma 3 1B and Qwen3 0.6B shapes"
  # FAMILY_SHAPES overrides the shapes (a dry run without a GPU uses tiny ones): name|synth arguments
  shapes=${FAMILY_SHAPES:-"gemma2-2b|--arch gemma2 --dim 2304 --layers 26 --heads 8 --kv-heads 4 --head-dim 256 --ffn 9216
gemma3-1b|--arch gemma3 --dim 1152 --layers 26 --heads 4 --kv-heads 1 --head-dim 256 --ffn 6912
qwen3-0.6b|--arch qwen3 --dim 1024 --layers 28 --heads 16 --kv-heads 8 --head-dim 128 --ffn 3072"}
  while IFS='|' read -r name shape; do
    [[ -z $name ]] && continue
    # shellcheck disable=SC2086
    "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf $shape --type Q4_K_M "$models/$name.gguf" || status=1
    for p in 512 4096; do
      "$bin/engine" bench -m "$models/$name.gguf" --device cuda -p $p -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
      peer "$models/$name.gguf" $p 128 3
    done
    rm -f "$models/$name.gguf"
  done <<< "$shapes"
  cat "$OUT/bench.jsonl"
fi
if want moe; then
  step "engine bench on the MoE shapes: Mixtral-like top-2 of 8, and BlockFFN chunk-sparse against dense"
  # MOE_SHAPE / BLOCKFFN_SHAPE / MOE_DEVICE override (a dry run without a GPU: tiny shapes, --device cpu)
  dev=${MOE_DEVICE:-cuda}
  # shellcheck disable=SC2086
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf --arch mixtral \
    ${MOE_SHAPE:---dim 2048 --layers 16 --heads 16 --kv-heads 4 --ffn 5632 --experts 8 --experts-used 2} --type F16 "$models/mix-f16.gguf" || status=1
  for t in Q4_0 Q8_0; do
    "$bin/engine" quantize "$models/mix-f16.gguf" "$models/mix-${t,,}.gguf" "$t" --threads 16 || status=1
    "$bin/engine" bench -m "$models/mix-${t,,}.gguf" --device "$dev" -p 512 -n 128 -r 3 --json >> "$OUT/bench.jsonl" || status=1
    peer "$models/mix-${t,,}.gguf" 512 128 3
  done
  rm -f "$models"/mix-*.gguf
  # shellcheck disable=SC2086
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf --arch blockffn \
    ${BLOCKFFN_SHAPE:---dim 2048 --layers 24 --heads 16 --kv-heads 4 --experts 64 --ffn 128} --sparsity 0.8 --chunk-locality 0.7 \
    --type F16 "$models/bffn.gguf" || status=1
  for dense in "" --dense-ffn; do
    "$bin/engine" bench -m "$models/bffn.gguf" --device "$dev" $dense -p 8 -n 128 -r 9 --json >> "$OUT/bench.jsonl" || status=1
    "$bin/engine" bench -m "$models/bffn.gguf" --device "$dev" $dense -p 512 -n 0 -r 3 --json >> "$OUT/bench.jsonl" || status=1
  done
  "$bin/engine" spec-bench -m "$models/bffn.gguf" --device "$dev" --verify-cost 1,2,4,8,16,32,64 -r 9 --json >> "$OUT/spec-bench.jsonl" || status=1
  rm -f "$models/bffn.gguf"
  tail -n 12 "$OUT/bench.jsonl"
fi
if want strategies; then
  step "engine bench --strategy: decoding strategies and the sampler chain against greedy on the device"
  dev=${STRATEGY_DEVICE:-cuda}
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf --dim 768 --layers 12 --heads 12 --ffn 2048 --type F16 "$models/s110-f16.gguf" || status=1
  "$bin/engine" quantize "$models/s110-f16.gguf" "$models/s110.gguf" Q4_0 --threads 16 || status=1
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf --dim 288 --layers 6 --heads 6 --ffn 768 --type F16 --seed 2 "$models/amateur.gguf" || status=1
  while read -r args; do
    # shellcheck disable=SC2086
    "$bin/engine" bench -m "$models/s110.gguf" --device "$dev" -p 64 -n 128 -r 5 --json $args >> "$OUT/bench.jsonl" || status=1
  done <<LIST
--sampler-chain --temp 0.8
--sampler-chain --temp 0.8 --min-p 0.05 --typical 0.95 --repeat-penalty 1.1 --presence-penalty 0.5 --dry-multiplier 0.8 --xtc-probability 0.5
--strategy beam --beams 4
--strategy diverse-beam --beams 8
--strategy contrastive
--strategy cad
--strategy adacad
--strategy cfg
--strategy contrastive-decoding --amateur-model $models/amateur.gguf
--strategy cautious --temp 0.8
--strategy extract
LIST
  rm -f "$models"/s110*.gguf "$models/amateur.gguf"
  tail -n 11 "$OUT/bench.jsonl"
fi
if want serve; then
  step "serve-load --device cuda on the 110M shape"
  # SERVE_SHAPE overrides the shape (a dry run without a GPU uses a tiny one)
  # shellcheck disable=SC2086
  "$bin/engine" synth --like .device/shared/vocab/ggml-vocab-llama-spm.gguf ${SERVE_SHAPE:---dim 768 --layers 12 --heads 12 --ffn 2048} \
    --type Q4_0 "$models/m110.gguf" || status=1
  "$bin/serve-load" "$models/m110.gguf" --device "${SERVE_DEVICE:-cuda}" --clients 16 --tokens 64 --requests 2 --soak-clients 64 \
    --soak-seconds "${SERVE_SOAK:-30}" > "$OUT/serve-load.txt" 2>&1 || status=1
  echo "-- with --spec 8 (prompt-lookup drafts verified in the batch)" >> "$OUT/serve-load.txt"
  "$bin/serve-load" "$models/m110.gguf" --device "${SERVE_DEVICE:-cuda}" --clients 16 --tokens 64 --requests 2 --soak-clients 16 \
    --soak-seconds 10 --spec 8 >> "$OUT/serve-load.txt" 2>&1 || status=1
  cat "$OUT/serve-load.txt"
fi
rm -rf "$models"

echo "run.sh: finished with status $status"
exit $status
