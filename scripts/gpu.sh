#!/usr/bin/env bash
# Runs on the GPU machine (a copy of this repository with the Deno binary carried as
# .deno-bin/deno.xz and deno's npm cache as node_modules/): builds the library with the CUDA
# backend, prints the device, then runs the steps named on the command line:
#   test            the deno test suite except notebooks (every native test also runs on cuda)
#   bench           bench/gpu/*.ts drivers; each writes JSON under $OUT (or bench/results/tmp)
#   <file.ts> ...   any other deno script, run with -A
# Example (device tool): bash scripts/gpu.sh test bench
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ -f .deno-bin/deno.xz ]; then
  mkdir -p /tmp/fp4lab-bin tools/node_modules/.bin
  xz -dc .deno-bin/deno.xz >/tmp/fp4lab-bin/deno && chmod +x /tmp/fp4lab-bin/deno
  ln -sf /tmp/fp4lab-bin/deno tools/node_modules/.bin/deno
fi
deno=tools/node_modules/.bin/deno
out=${OUT:-bench/results/tmp}
mkdir -p "$out"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
make -s -j"$(nproc)" -C cuda || exit 1

status=0
for step in "$@"; do
  echo "=== $step"
  case "$step" in
    test)
      tests=$(ls tests/*_test.ts | grep -v notebooks_test)
      # shellcheck disable=SC2086
      NO_COLOR=1 "$deno" test -A $tests >"$out/test.log" 2>&1 || status=1
      grep -E "FAILED|=> |error|passed|failed" "$out/test.log" | tail -40
      ;;
    bench)
      for b in bench/gpu/*.ts; do
        [ -f "$b" ] || continue
        echo "--- $b"
        "$deno" run -A "$b" --out "$out" || status=1
      done
      ;;
    *.ts)
      "$deno" run -A "$step" --out "$out" || status=1
      ;;
    *)
      echo "unknown step $step" >&2
      status=1
      ;;
  esac
done
exit $status
