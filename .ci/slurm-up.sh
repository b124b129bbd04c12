#!/usr/bin/env bash
# slurm-up.sh - bring up a one-node Slurm cluster on this host, no systemd needed (for .ci/run;
# adapted from ../shared/slurm/slurm-up.sh, which CI may not have).
# Debian 12 (bookworm): slurmctld slurmd slurm-client munge 22.05.8 (+ slurmdbd, mariadb-server
# when SLURM_ACCOUNTING=dbd). Everything Slurm/MariaDB writes lives under $SLURM_ROOT; munge
# uses its Debian defaults (/etc/munge/munge.key, /run/munge). Idempotent: safe to call again.
# Clients need:  export SLURM_CONF=$SLURM_ROOT/etc/slurm.conf   (or: source $SLURM_ROOT/env.sh)
#
# Knobs (environment):
#   SLURM_ROOT=/tmp/dagrun-ci/slurm   where conf, state, spool, logs, pid files go
#   SLURM_SCHED_PARAMS=...           SchedulerParameters; default batch_sched_delay=0,sched_min_interval=0
#                                    (Slurm's own default batch_sched_delay=3 => sbatch jobs start 1-3 s late)
#                                    set to "" to get pure Slurm defaults
#   SLURM_PARTITION_OPTS=...         extra partition options; default "OverSubscribe=FORCE:8": up to 8
#                                    jobs share a core, so the tests' jobs (sleeps and shell one-liners)
#                                    start at once instead of queueing 2 at a time behind the 2 cores
#                                    (the 50-task test: 30 s -> 14 s). "" for a plain partition
#   SLURM_ACCOUNTING=filetxt|dbd     filetxt (default): no DB, `sacct -c` reads the job-completion file;
#                                    dbd: MariaDB + slurmdbd, full `sacct`
#   SLURM_KEEP_STATE=1               keep queued jobs / job ids from a previous run (default: start clean)
set -euo pipefail

SLURM_ROOT=${SLURM_ROOT:-/tmp/dagrun-ci/slurm}
HOST=$(hostname -s)
CONF=$SLURM_ROOT/etc/slurm.conf
SCHED=${SLURM_SCHED_PARAMS-batch_sched_delay=0,sched_min_interval=0}
ACCT=${SLURM_ACCOUNTING:-filetxt}
export SLURM_CONF=$CONF

log() { echo "[slurm-up $(date +%T)] $*"; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
waitfor() { local n=$1; shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; "$@"; }

# 1. packages (only if missing)
pkgs=(slurmctld slurmd slurm-client munge); bins=(slurmctld slurmd sbatch munged)
[ "$ACCT" = dbd ] && { pkgs+=(slurmdbd mariadb-server); bins+=(slurmdbd mariadbd); }
for b in "${bins[@]}"; do
  if ! command -v "$b" >/dev/null; then
    log "installing ${pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
    break
  fi
done
mkdir -p "$SLURM_ROOT"/{etc,state,spool,log,run}

# 2. munge (authenticates every Slurm RPC)
[ -s /etc/munge/munge.key ] || { install -d -o munge -g munge -m 0700 /etc/munge; mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
munge_ok() { munge -n | unmunge; }
if ! munge_ok >/dev/null 2>&1; then
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged          # forks; pid in /run/munge/munged.pid
  touch "$SLURM_ROOT/run/munge-started-by-us"
  waitfor 50 munge_ok
fi

# 3. config (regenerated each time: host name, CPUs and memory come from this machine)
eval "$(slurmd -C | head -1 | tr ' ' '\n' | grep -E '^(CPUs|RealMemory)=' | sed 's/^/NODE_/')"
if [ "$ACCT" = dbd ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
cat > "$CONF" <<EOF
ClusterName=local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
$( [ -n "$SCHED" ] && echo "SchedulerParameters=$SCHED" )
MailProg=/bin/true
ReturnToService=2
MinJobAge=${SLURM_MIN_JOB_AGE:-300}
StateSaveLocation=$SLURM_ROOT/state
SlurmdSpoolDir=$SLURM_ROOT/spool
SlurmctldPidFile=$SLURM_ROOT/run/slurmctld.pid
SlurmdPidFile=$SLURM_ROOT/run/slurmd.pid
SlurmctldLogFile=$SLURM_ROOT/log/slurmctld.log
SlurmdLogFile=$SLURM_ROOT/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_ROOT/log/jobcomp.txt
$ACCT_LINES
NodeName=$HOST NodeAddr=127.0.0.1 NodeHostname=$HOST CPUs=$NODE_CPUs RealMemory=$NODE_RealMemory State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP ${SLURM_PARTITION_OPTS-OverSubscribe=FORCE:8}
EOF
printf 'export SLURM_CONF=%s\n' "$CONF" > "$SLURM_ROOT/env.sh"

# 4. optional accounting database: MariaDB (data under $SLURM_ROOT/mariadb, TCP 127.0.0.1:3306) + slurmdbd
if [ "$ACCT" = dbd ]; then
  M=$SLURM_ROOT/mariadb
  sql() { mariadb -S "$M/mysqld.sock" -u root -e "$1"; }
  if ! alive "$M/mariadbd.pid"; then
    install -d -o mysql -g mysql "$M"
    [ -d "$M/data/mysql" ] || mariadb-install-db --user=mysql --datadir="$M/data" \
        --auth-root-authentication-method=socket --skip-test-db >"$M/install.log" 2>&1
    log "starting mariadbd"
    setsid -f mariadbd --user=mysql --datadir="$M/data" --socket="$M/mysqld.sock" \
        --bind-address=127.0.0.1 --port=3306 --pid-file="$M/mariadbd.pid" --log-error="$M/error.log" \
        --skip-log-bin --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1
    waitfor 100 sql 'select 1'
  fi
  sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
       GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
  cat > "$SLURM_ROOT/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=3306
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$SLURM_ROOT/run/slurmdbd.pid
LogFile=$SLURM_ROOT/log/slurmdbd.log
DebugLevel=info
EOF
  chmod 600 "$SLURM_ROOT/etc/slurmdbd.conf"           # slurmdbd refuses a world-readable conf
  if ! alive "$SLURM_ROOT/run/slurmdbd.pid"; then log "starting slurmdbd"; slurmdbd; fi
  waitfor 150 sacctmgr -n show cluster
  sacctmgr -n show cluster format=cluster | grep -qw local || sacctmgr -i add cluster local >/dev/null
fi

# 5. controller and node daemon (both fork themselves and write pid files)
if ! alive "$SLURM_ROOT/run/slurmctld.pid"; then
  log "starting slurmctld"
  if [ "${SLURM_KEEP_STATE:-0}" = 1 ]; then slurmctld -i; else slurmctld -c -i; fi
fi
ctld_up() { scontrol ping | grep -q UP; }
waitfor 100 ctld_up || { log "slurmctld not answering"; tail -20 "$SLURM_ROOT/log/slurmctld.log"; exit 1; }
if ! alive "$SLURM_ROOT/run/slurmd.pid"; then log "starting slurmd"; slurmd; fi

# 6. wait until the node takes jobs
state=""
for _ in $(seq 150); do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) break ;;
    down*|drain*) scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in idle*|mixed*|allocated*) ;; *) log "node state '$state'"; tail -20 "$SLURM_ROOT/log/slurmd.log"; exit 1;; esac
log "up: node $HOST $state, accounting=$ACCT  (export SLURM_CONF=$CONF)"
