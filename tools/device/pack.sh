#!/usr/bin/env bash
# Packs what a GPU machine without dotnet needs into .device/ (ignored by git; name it in the device
# tool's `carry`): the self-contained test binary, which runs its own tests. See ../../README.md and
# ../shared/device/README.md. Run here, before the device call:
#   dotnet pwsh build.ps1 pack-device      (or: bash tools/device/pack.sh)
set -euo pipefail
cd "$(dirname "$0")/../.."
out=.device
rm -rf "$out/gputests" "$out/gputests.tar.xz"
mkdir -p "$out"
dotnet publish tests/Engine.Tests -c Release -r linux-x64 --self-contained \
  -p:InvariantGlobalization=true -p:SatelliteResourceLanguages=en -o "$out/gputests" >&2
tar -C "$out" -cf - gputests | xz -6 -T2 > "$out/gputests.tar.xz"
rm -rf "$out/gputests"
size=$(stat -c %s "$out/gputests.tar.xz")
echo "packed $out/gputests.tar.xz ($((size / 1048576)) MiB; the device tool carries at most 64 MiB)"
if (( size > 60 * 1048576 )); then echo "pack.sh: the archive is too large to carry" >&2; exit 1; fi
