#!/bin/sh
# test-report.sh — filters `go test -v` output on stdin: it keeps package
# results, failures, skips with their reasons, and the results of tests and
# their first-level subtests (so "TestStore/postgres" shows the Postgres
# half ran); it drops the chatter of passing tests and keeps the full log in
# .test-output.log. Exits non-zero when go test failed.
set -u
log=${HANGAR_TEST_LOG:-.test-output.log}
tee "$log" | grep --line-buffered -E '^( {0,4}--- (FAIL|SKIP|PASS)|ok |FAIL|panic:|\s+--- FAIL|\s+\S+_test\.go:[0-9]+: (skipping|required))'
if grep -qE '^(FAIL|--- FAIL|panic:)' "$log"; then
	echo "go test failed; the full output is in $log"
	exit 1
fi
exit 0
