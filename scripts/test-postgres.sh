#!/bin/sh
# test-postgres.sh — starts a private Postgres cluster for the test suite
# (its own data directory and port, trust auth on 127.0.0.1 only), so tests
# never touch the machine's own clusters or their pg_hba.conf. Idempotent:
# an already running test cluster is reused. Prints the URL to use as
# HANGAR_TEST_POSTGRES on its last line.
set -eu
port=${HANGAR_TEST_PG_PORT:-54329}
dir=${HANGAR_TEST_PG_DIR:-/var/tmp/hangar-test-pg}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
if [ -z "$bin" ]; then
	echo "test-postgres: Postgres is not installed (apt-get install postgresql)" >&2
	exit 1
fi
as_pg() {
	if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
if [ ! -s "$dir/PG_VERSION" ]; then
	mkdir -p "$dir"
	[ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
	as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
fi
if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
	as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start \
		-o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" >/dev/null
fi
echo "postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
