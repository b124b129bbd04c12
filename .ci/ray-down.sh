#!/usr/bin/env bash
# ray-down.sh - stop the head ray-up.sh started: the processes whose command line names
# $RAY_ROOT, and their descendants (workers), by pid -- never `ray stop`, which stops every
# Ray on the machine.
set -uo pipefail
RAY_ROOT=${RAY_ROOT:-/tmp/dagrun-ci-ray}
roots=()
for d in /proc/[0-9]*; do
  { tr "\0" " " <"$d/cmdline"; } 2>/dev/null | grep -qF -- "$RAY_ROOT/" && roots+=("${d#/proc/}")
done
pids=("${roots[@]}")
for _ in 1 2 3 4; do                       # descendants, a few generations deep
  for p in "${pids[@]}"; do
    for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do
      [[ " ${pids[*]} " == *" $c "* ]] || pids+=("$c")
    done
  done
done
[ ${#pids[@]} -eq 0 ] && { echo "[ray-down] nothing running"; exit 0; }
kill -TERM "${pids[@]}" 2>/dev/null
for _ in $(seq 50); do alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done; [ $alive = 0 ] && break; sleep 0.1; done
kill -KILL "${pids[@]}" 2>/dev/null
echo "[ray-down $(date +%T)] stopped ${#pids[@]} process(es)"
