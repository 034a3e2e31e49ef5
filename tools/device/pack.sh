#!/usr/bin/env bash
# Packs what a GPU machine without dotnet needs into .device/ (ignored by git; name it in the device
# tool's `carry`): the self-contained test binary and the `engine` CLI published into one folder (they
# share the runtime, so the archive holds it once), and the files of ../shared the GPU tests and the
# benchmarks read (stories260K, the llama vocabulary). Run here, before the device call:
#   dotnet pwsh build.ps1 pack-device      (or: bash tools/device/pack.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.device
rm -rf "$out/gputests" "$out/gputests.tar.xz" "$out/shared"
mkdir -p "$out"
common=(-c Release -r linux-x64 --self-contained -p:InvariantGlobalization=true -p:SatelliteResourceLanguages=en -o "$out/gputests")
dotnet publish tests/Engine.Tests "${common[@]}" >&2
dotnet publish tools/Engine.Cli "${common[@]}" >&2
dotnet publish tools/bench/serve-load "${common[@]}" >&2
for f in build/native/libengine_cpu.so build/native/libengine_quant_host.so; do [[ -f $f ]] && cp "$f" "$out/gputests/"; done
tar -C "$out" -cf - gputests | xz -6 -T2 > "$out/gputests.tar.xz"
rm -rf "$out/gputests"

shared=${ENGINE_SHARED:-../shared}
mkdir -p "$out/shared/models" "$out/shared/vocab"
cp -r "$shared/models/stories260K" "$out/shared/models/"
cp "$shared/vocab/ggml-vocab-llama-spm.gguf" "$out/shared/vocab/"

size=$(du -cb "$out/gputests.tar.xz" "$out/shared" | tail -1 | cut -f1)
echo "packed .device/ ($((size / 1048576)) MiB; the device tool carries at most 64 MiB)"
if (( size > 62 * 1048576 )); then echo "pack.sh: .device is too large to carry" >&2; exit 1; fi
