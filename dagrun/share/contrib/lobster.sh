#!/bin/sh
# lobster.sh -- a dagrun worker in plain POSIX sh, using only the bash protocol
# (dagrun claim / heartbeat / complete / fail). Copy it, or the loop body, into your own script.
#
#   DAGRUN_HOME=~/.dagrun AGENT='claude -p' sh contrib/lobster.sh GOAL
#
# Loop: claim one ready task -> run "$AGENT" with its prompt.md on stdin, in the task's
# workdir, stdout/stderr into the claim -> complete (exit 0) or fail (any other exit code).
# While the agent runs, a background loop heartbeats every lease/3 seconds; if a heartbeat
# is refused (the task was cancelled, or the claim was taken away) the agent is stopped,
# and so it is after the task's `timeout` (the attempt then fails as timed out).
#
# Environment:
#   AGENT    the agent command, run as sh -c "$AGENT" (default: the task's "agent" from the plan)
#   DAGRUN   how to call dagrun (default: dagrun)
#   POLL     seconds to wait when nothing is ready yet (default: 1)
#   MAX_TASKS   stop after this many tasks (default: no limit)
# The agent sees the same DAGRUN_* variables as under `dagrun run` (DAGRUN_GOAL, DAGRUN_TASK,
# DAGRUN_ATTEMPT, DAGRUN_PROMPT_FILE, DAGRUN_TASK_DIR, DAGRUN_RUN_ID ...).
#
# Exit: 0 when the goal has ended (whatever its outcome: see `dagrun status GOAL`) or after
# MAX_TASKS; 2 usage; otherwise dagrun's exit code. SIGINT/SIGTERM stop the agent and exit
# 130/143; the claim dies with this script and any worker puts the task back (attempt
# recorded as lost, not counted against retries). No lock files: the claim is the lock.
set -u
if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: lobster.sh GOAL   (env: AGENT, DAGRUN, POLL, MAX_TASKS; see the comment at the top)" >&2
    exit 2
fi
goal=$1
DAGRUN=${DAGRUN:-dagrun}
POLL=${POLL:-1}
me=$$                      # the claim's holder: alive as long as this script is
agent= hb= ran=0

log() { echo "lobster[$me]: $*" >&2; }

stop_children() {
    [ -n "$hb" ] && kill "$hb" 2>/dev/null
    [ -n "$agent" ] && { kill -TERM -"$agent" 2>/dev/null || kill -TERM "$agent" 2>/dev/null; }
}
trap 'stop_children; exit 130' INT
trap 'stop_children; exit 143' TERM HUP

heartbeat_loop() {          # a subshell beside the agent; $me is still the script's pid
    # It checks every second that the agent still runs, so it ends on its own even if the
    # TERM below is lost (dash drops a signal that lands between fork and the subshell's
    # own trap). It is not part of the agent: out of reach of the orphan reaper.
    unset DAGRUN_RUN_ID
    s=
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    every=$(( ${DAGRUN_LEASE%.*} / 3 )); [ "$every" -ge 1 ] || every=1
    limit=${DAGRUN_TIMEOUT%.*} t=0
    while sleep 1 & s=$!; wait "$s"; kill -0 "$agent" 2>/dev/null; do
        t=$((t + 1))
        if [ -n "$limit" ] && [ "$t" -ge "$limit" ]; then     # the plan's timeout for this task
            log "$DAGRUN_TASK: timed out after ${DAGRUN_TIMEOUT}s: stopping the agent"
            kill -TERM -"$agent" 2>/dev/null || kill -TERM "$agent" 2>/dev/null
            exit 124
        fi
        [ $((t % every)) -eq 0 ] || continue
        if ! $DAGRUN heartbeat --pid "$me" "$DAGRUN_GOAL" "$DAGRUN_TASK" 2>/dev/null; then
            log "$DAGRUN_TASK: heartbeat refused (cancelled or claim lost): stopping the agent"
            kill -TERM -"$agent" 2>/dev/null || kill -TERM "$agent" 2>/dev/null
            exit 0
        fi
    done
}

while [ -z "${MAX_TASKS:-}" ] || [ "$ran" -lt "$MAX_TASKS" ]; do
    claimed=$($DAGRUN claim --pid "$me" --env "$goal"); rc=$?
    case $rc in
        0) eval "$claimed" ;;
        3) sleep "$POLL"; continue ;;                  # nothing ready yet
        1) log "goal $goal has ended"; exit 0 ;;
        *) log "dagrun claim failed (exit $rc)"; exit "$rc" ;;
    esac
    cmd=${AGENT:-$DAGRUN_AGENT}
    log "$DAGRUN_TASK: running (attempt $DAGRUN_ATTEMPT)"
    # own process group when setsid exists, so a stop reaches the agent's children too
    if command -v setsid >/dev/null 2>&1; then set -- setsid; else set --; fi
    (cd "$DAGRUN_WORKDIR" && exec "$@" sh -c "$cmd") \
        < "$DAGRUN_PROMPT_FILE" > "$DAGRUN_STDOUT_FILE" 2> "$DAGRUN_STDERR_FILE" &
    agent=$!
    heartbeat_loop & hb=$!
    wait "$agent"; code=$?
    kill "$hb" 2>/dev/null; wait "$hb"; why=$?; agent= hb=
    ran=$((ran + 1))
    if [ "$why" -eq 124 ]; then
        $DAGRUN fail --pid "$me" --exit-code "$code" --reason "timed out after ${DAGRUN_TIMEOUT}s" \
            "$DAGRUN_GOAL" "$DAGRUN_TASK" && log "$DAGRUN_TASK: failed (timeout)"
    elif [ "$code" -eq 0 ]; then
        $DAGRUN complete --pid "$me" "$DAGRUN_GOAL" "$DAGRUN_TASK" && log "$DAGRUN_TASK: done"
    else
        $DAGRUN fail --pid "$me" --exit-code "$code" --reason "agent exited with code $code" \
            "$DAGRUN_GOAL" "$DAGRUN_TASK" && log "$DAGRUN_TASK: failed (exit $code)"
    fi
done
