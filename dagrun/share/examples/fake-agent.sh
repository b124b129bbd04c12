#!/bin/sh
# A stand-in for `claude -p` / `codex exec`, so the examples run offline: it reads the
# rendered prompt on stdin, "thinks" for FAKE_AGENT_SLEEP seconds (default 0.4) and prints
# an answer that shows what it was given. Exit code FAKE_AGENT_EXIT (default 0).
prompt=$(cat)
sleep "${FAKE_AGENT_SLEEP:-0.4}"
echo "# Result of $DAGRUN_TASK (attempt $DAGRUN_ATTEMPT)"
echo
echo "The task I was given begins with:"
printf '%s\n' "$prompt" | head -n 1 | sed 's/^/> /'
echo
n=$(printf '%s\n' "$prompt" | grep -c '^## Output of ')
echo "I received the outputs of $n upstream task(s):"
printf '%s\n' "$prompt" | grep '^## Output of ' | sed 's/^## Output of /- /'
echo
echo "Done: $DAGRUN_TASK looks good."
exit "${FAKE_AGENT_EXIT:-0}"
