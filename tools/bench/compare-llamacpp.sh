#!/usr/bin/env bash
# Side-by-side CPU benchmark: `engine bench` against llama.cpp's `llama-bench` on the same GGUF files
# with the same thread count, in interleaved rounds (engine, llama.cpp, engine, ...) so that a noisy
# machine slows both alike. Prints a markdown table of medians over the rounds: pp and tg tokens/s,
# ours/theirs ratios, and each process's peak resident memory (from /usr/bin/time).
#
#   LLAMA_BENCH=/path/to/llama-bench tools/bench/compare-llamacpp.sh [-r ROUNDS] [-t THREADS] MODEL.gguf...
#
# llama-bench is built separately from llama.cpp's source (see docs/benchmarks.md); nothing of it
# lives in this repository. Needs python3 for the JSON and the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=3 threads=2 prompt=128 gen=64 reps=5
while getopts "r:t:" opt; do
  case $opt in r) rounds=$OPTARG ;; t) threads=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[[ $# -gt 0 ]] || { echo "usage: LLAMA_BENCH=... $0 [-r ROUNDS] [-t THREADS] MODEL.gguf..." >&2; exit 2; }
: "${LLAMA_BENCH:?set LLAMA_BENCH to the llama-bench binary}"
[[ -x /usr/bin/time ]] || { echo "needs /usr/bin/time (GNU time) for peak memory" >&2; exit 2; }

dotnet build tools/Engine.Cli -c Release -v q -nologo >/dev/null
engine=tools/Engine.Cli/bin/Release/net10.0/engine
out=$(mktemp -d)
for ((round = 1; round <= rounds; round++)); do
  for model in "$@"; do
    name=$(basename "$model")
    /usr/bin/time -f "%M" -o "$out/rss" "$engine" bench -m "$model" --device cpu -p $prompt -n $gen -r $reps -t "$threads" --json \
      > "$out/engine.json" 2>/dev/null
    echo "{\"who\":\"engine\",\"model\":\"$name\",\"rss_kib\":$(tail -n 1 "$out/rss"),\"result\":$(tail -n 1 "$out/engine.json")}" >> "$out/all.jsonl"
    /usr/bin/time -f "%M" -o "$out/rss" "$LLAMA_BENCH" -m "$model" -p $prompt -n $gen -r $reps -t "$threads" -o jsonl \
      > "$out/llama.jsonl" 2>/dev/null
    echo "{\"who\":\"llama\",\"model\":\"$name\",\"rss_kib\":$(tail -n 1 "$out/rss"),\"result\":[$(paste -sd, "$out/llama.jsonl")]}" >> "$out/all.jsonl"
    echo "round $round: $name done" >&2
  done
done

python3 - "$out/all.jsonl" "$threads" "$rounds" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
threads, rounds = sys.argv[2], sys.argv[3]
models = list(dict.fromkeys(r["model"] for r in runs))
def med(xs): return statistics.median(xs)
print(f"| model | engine pp | llama.cpp pp | pp ratio | engine tg | llama.cpp tg | tg ratio | engine RSS | llama.cpp RSS |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for m in models:
    ours = [r for r in runs if r["model"] == m and r["who"] == "engine"]
    theirs = [r for r in runs if r["model"] == m and r["who"] == "llama"]
    opp = med([r["result"]["pp_tokens_per_s"] for r in ours])
    otg = med([r["result"]["tg_tokens_per_s"] for r in ours])
    tpp = med([x["avg_ts"] for r in theirs for x in r["result"] if x["n_prompt"] > 0])
    ttg = med([x["avg_ts"] for r in theirs for x in r["result"] if x["n_gen"] > 0])
    orss = med([r["rss_kib"] for r in ours]) / 1024
    trss = med([r["rss_kib"] for r in theirs]) / 1024
    print(f"| {m} | {opp:.0f} | {tpp:.0f} | {opp/tpp:.2f}× | {otg:.1f} | {ttg:.1f} | {otg/ttg:.2f}× | {orss:.0f} MiB | {trss:.0f} MiB |")
print(f"\n{threads} threads, pp128 / tg64, medians of {rounds} interleaved rounds of 5 repetitions each.")
PY
rm -rf "$out"
