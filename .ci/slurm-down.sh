#!/usr/bin/env bash
# slurm-down.sh - stop what slurm-up.sh started (by pid file only, never by name) and wipe
# $SLURM_ROOT unless SLURM_WIPE=0. Safe to call when nothing is running.
set -uo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/dagrun-ci/slurm}
export SLURM_CONF=$SLURM_ROOT/etc/slurm.conf
log() { echo "[slurm-down $(date +%T)] $*"; }

stop_pidfile() {  # name pidfile
  local name=$1 pf=$2 pid
  [ -s "$pf" ] || return 0
  pid=$(cat "$pf")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then log "$name ($pid) ignored TERM for 15 s, sending KILL"; kill -KILL "$pid"; fi
    log "$name ($pid) stopped"
  fi
  rm -f "$pf"
}

# cancel queued/running jobs first so no slurmstepd or job process outlives the daemons
if [ -f "$SLURM_CONF" ] && scontrol ping 2>/dev/null | grep -q UP; then
  scancel --full --user="$(id -un)" 2>/dev/null || true
  for _ in $(seq 100); do
    [ -z "$(squeue -h -t PD,R,CG,CF,S -o %i 2>/dev/null | head -1)" ] && break; sleep 0.1
  done
fi

stop_pidfile slurmd    "$SLURM_ROOT/run/slurmd.pid"
stop_pidfile slurmctld "$SLURM_ROOT/run/slurmctld.pid"
stop_pidfile slurmdbd  "$SLURM_ROOT/run/slurmdbd.pid"
stop_pidfile mariadbd  "$SLURM_ROOT/mariadb/mariadbd.pid"
if [ -e "$SLURM_ROOT/run/munge-started-by-us" ]; then      # only a munged that slurm-up.sh started
  stop_pidfile munged /run/munge/munged.pid
  rm -f "$SLURM_ROOT/run/munge-started-by-us"
fi

if [ "${SLURM_WIPE:-1}" = 1 ] && [ -d "$SLURM_ROOT" ]; then
  rm -rf "$SLURM_ROOT"
  log "wiped $SLURM_ROOT"
fi
log "down"
