#!/bin/bash
# What one statement per row costs a PostgreSQL 15 backend, against one
# statement for 100 rows: the question behind standin-pgrepl's backlog rate
# (its standby backend is the bottleneck, in per-statement executor set-up).
# Not a benchmark of standin: a scratch server, pgbench scale 10, one client.
#   A: 100 single-row full-tuple UPDATEs by primary key, prepared, in one
#      pipeline (the shape standin-pgrepl sends today)
#   B: the same 100 rows (random keys) in one UPDATE ... FROM unnest(...)
# Run as root: runuser -u postgres -- bash bench/pg/statement-batching.sh
set -eu
B=/usr/lib/postgresql/15/bin
D=$(mktemp -d /tmp/standin-batching-XXXXXX)
PORT=${PORT:-54330}
trap '"$B/pg_ctl" -D "$D/data" stop -m fast >/dev/null 2>&1 || true; rm -rf "$D"' EXIT
"$B/initdb" -D "$D/data" >/dev/null 2>&1
"$B/pg_ctl" -D "$D/data" -o "-p $PORT -k $D -c listen_addresses= -c synchronous_commit=off -c shared_buffers=256MB" \
	-l "$D/log" start >/dev/null
pgbench -h "$D" -p "$PORT" -i -s 10 -q postgres >/dev/null 2>&1
{
	printf '%s\n' '\startpipeline'
	for i in $(seq 1 100); do
		echo "\\set a$i random(1, 1000000)"
		echo "UPDATE pgbench_accounts SET bid = 1, abalance = abalance + 1, filler = 'x' WHERE aid = :a$i;"
	done
	printf '%s\n' '\endpipeline'
} > "$D/a.sql"
echo "UPDATE pgbench_accounts t SET bid = 1, abalance = t.abalance + 1, filler = 'x' FROM unnest(ARRAY(SELECT DISTINCT (random() * 999999)::int + 1 FROM generate_series(1, 100))) AS v(aid) WHERE t.aid = v.aid;" > "$D/b.sql"
for r in 1 2; do
	for s in a b; do
		tps=$(pgbench -h "$D" -p "$PORT" -n -M prepared -f "$D/$s.sql" -T 10 -c 1 postgres 2>/dev/null |
		      sed -n 's/^tps = \([0-9.]*\).*/\1/p')
		echo "round $r $s: $tps transactions of 100 rows/s"
	done
done
