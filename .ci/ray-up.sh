#!/usr/bin/env bash
# ray-up.sh - start a local Ray head for the `ray` tests (~8 s, ~0.7 GB), its files under
# $RAY_ROOT (default /tmp/dagrun-ci-ray). Clients: export RAY_ADDRESS=127.0.0.1:$RAY_PORT.
set -euo pipefail
RAY_ROOT=${RAY_ROOT:-/tmp/dagrun-ci-ray}
RAY_PORT=${RAY_PORT:-6379}
RAY=${RAY:-$(dirname "$0")/../.venv/bin/ray}
mkdir -p "$RAY_ROOT"
"$RAY" start --head --port "$RAY_PORT" --num-cpus "${RAY_CPUS:-2}" --include-dashboard=false \
  --node-ip-address 127.0.0.1 --disable-usage-stats --temp-dir "$RAY_ROOT" >"$RAY_ROOT/start.log" 2>&1 \
  || { tail -20 "$RAY_ROOT/start.log"; exit 1; }
echo "[ray-up $(date +%T)] head up at 127.0.0.1:$RAY_PORT (export RAY_ADDRESS=127.0.0.1:$RAY_PORT)"
