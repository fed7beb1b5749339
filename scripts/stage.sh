#!/bin/sh
# stage.sh NAME COMMAND... — runs one stage of a build or test run and says
# how long it took, so every run shows where the time goes. A summary line
# per stage is appended to $HANGAR_STAGE_LOG when set.
name=$1; shift
start=$(date +%s)
echo "==> [$name] started $(date -u +%H:%M:%S)"
"$@"
rc=$?
took=$(( $(date +%s) - start ))
if [ $rc -eq 0 ]; then status=ok; else status="FAILED (exit $rc)"; fi
echo "<== [$name] $status in ${took}s"
if [ -n "$HANGAR_STAGE_LOG" ]; then
	printf '%-28s %6ss  %s\n' "$name" "$took" "$status" >> "$HANGAR_STAGE_LOG"
fi
exit $rc
