#!/bin/bash
# ./sandbox.sh [start|stop|status]: a two-node standin demo cluster on this
# machine's loopback (Debian 12, as root).
#
#   start (default)  install what is missing, build standin, start
#                    PostgreSQL 15, slapd 2.5 and Dovecot 2.3 on node a
#                    (master) and node b (standby) on free 127.0.0.1 ports,
#                    write the cluster's standin.conf and secrets, create the
#                    cluster state in a one-member etcd, write some data on
#                    the master, run every standin daemon on both nodes,
#                    switch the master a -> b and back while a client
#                    writes, and print `standinctl status`.  It all keeps
#                    running.
#   stop             stop everything the sandbox started (idempotent).
#   status           `standinctl status` and which servers run.
#
# Environment: STANDIN_SANDBOX (default /tmp/standin-sandbox; every directory
# above it must be searchable by the postgres and nobody users).
set -euo pipefail

top=$(cd "$(dirname "$0")" && pwd)
box=${STANDIN_SANDBOX:-/tmp/standin-sandbox}
build=$top/build-sandbox
harness=$top/tests/lib/standin_harness.py
conf=$box/conf/standin.conf
py=/usr/bin/python3
ctl=$build/tools/standinctl

say() { printf '\n== %s\n' "$*"; }
die() { echo "sandbox.sh: $*" >&2; exit 1; }

install_and_build() {
	# shellcheck source=tools/deps.sh
	. "$top/tools/deps.sh"
	standin_install_missing "$top/.apt.log" || die "cannot install the packages standin needs"
	say "building standin in $build"
	if [ ! -x "$top/configure" ] || [ "$top/configure.ac" -nt "$top/configure" ] ||
		[ "$top/Makefile.am" -nt "$top/configure" ]; then
		(cd "$top" && autoreconf -fi) >/dev/null 2>&1 || (cd "$top" && autoreconf -fi)
	fi
	mkdir -p "$build"
	if [ ! -f "$build/Makefile" ]; then
		(cd "$build" && "$top/configure" -q) || die "configure failed"
	fi
	make -C "$build" -s -j"$(nproc)" >/dev/null || make -C "$build" || die "build failed"
}

# write_config: standin.conf and its secret files for the servers of
# servers.env, as an administrator would write them (one password file per
# service, mode 0600).
write_config() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local d=$box/conf
	mkdir -p "$d"
	chmod 700 "$d"
	umask 077
	{
		echo "$STANDIN_PG_A_HOST:$STANDIN_PG_A_PORT:*:$STANDIN_PG_A_USER:$STANDIN_PG_A_PASSWORD"
		echo "$STANDIN_PG_B_HOST:$STANDIN_PG_B_PORT:*:$STANDIN_PG_B_USER:$STANDIN_PG_B_PASSWORD"
	} >"$d/pgpass"
	printf '%s' "$STANDIN_LDAP_A_PASSWORD" >"$d/ldap.secret"
	printf '%s' "$STANDIN_IMAP_A_MASTER_PASSWORD" >"$d/imap.secret"
	printf 'alice\nbob\n' >"$d/imap-users"
	umask 022
	# The switchover ends the old master's IMAP sessions with doveadm kick; the
	# sandbox's two Dovecots each have their own configuration file.
	cat >"$d/kick" <<EOF
#!/bin/sh
case "\$1" in
a) exec /usr/bin/doveadm -c $STANDIN_IMAP_A_CONF kick '*' ;;
b) exec /usr/bin/doveadm -c $STANDIN_IMAP_B_CONF kick '*' ;;
esac
exit 1
EOF
	chmod 755 "$d/kick"
	# Free loopback ports for the proxies: pg, ldap, imap on node a, then on b.
	local ports
	ports=$("$py" -c 'import socket
socks = [socket.socket() for _ in range(6)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
	read -r PROXY_PG_A PROXY_LDAP_A PROXY_IMAP_A PROXY_PG_B PROXY_LDAP_B PROXY_IMAP_B <<<"$ports"
	printf 'PROXY_PG_A=%s\nPROXY_LDAP_A=%s\nPROXY_IMAP_A=%s\nPROXY_PG_B=%s\nPROXY_LDAP_B=%s\nPROXY_IMAP_B=%s\n' \
		$ports >"$box/proxy.env"
	# Clients of the proxies log in with the master's password.
	(umask 077 && printf '127.0.0.1:%s:*:%s:%s\n' "$PROXY_PG_A" "$STANDIN_PG_A_USER" "$STANDIN_PG_A_PASSWORD" \
		"$PROXY_PG_B" "$STANDIN_PG_A_USER" "$STANDIN_PG_A_PASSWORD" >>"$d/pgpass")
	cat >"$conf" <<EOF
# standin.conf of the sandbox ($box), written by sandbox.sh.
# The same file serves both nodes; each program is told its node with -n.
[cluster]
name = sandbox
log_level = info
# The cluster store: a one-member etcd on loopback (three members in production).
etcd = $STANDIN_ETCD_URL

[node a]
address = 127.0.0.1
hostname = sandbox-a
state_dir = $box/a/standin/state
run_dir = $box/a/standin/run

[node b]
address = 127.0.0.1
hostname = sandbox-b
state_dir = $box/b/standin/state
run_dir = $box/b/standin/run

[pg]
endpoint.a = $STANDIN_PG_A_HOST:$STANDIN_PG_A_PORT
endpoint.b = $STANDIN_PG_B_HOST:$STANDIN_PG_B_PORT
dbname = groupware
user = $STANDIN_PG_A_USER
passfile = $d/pgpass
# Every server here speaks TLS with a certificate of the sandbox's test CA;
# the defaults would not ask for it on loopback: demand it, as between hosts.
sslmode = verify-full
sslrootcert = $STANDIN_TLS_CA

[ldap]
endpoint.a = $STANDIN_LDAP_A_URI
endpoint.b = $STANDIN_LDAP_B_URI
suffix = $STANDIN_LDAP_A_SUFFIX
bind_dn = $STANDIN_LDAP_A_ROOTDN
password_file = $d/ldap.secret
# A switchover makes the old master's slapd read-only over cn=config.
config_bind_dn = cn=config
config_password_file = $d/ldap.secret
starttls = demand
ca_file = $STANDIN_TLS_CA

[imap]
endpoint.a = imap://$STANDIN_IMAP_A_HOST:$STANDIN_IMAP_A_PORT
endpoint.b = imap://$STANDIN_IMAP_B_HOST:$STANDIN_IMAP_B_PORT
admin_user = $STANDIN_IMAP_A_MASTER_USER
password_file = $d/imap.secret
users_file = $d/imap-users
workers = 2
kick_command = $d/kick %n
starttls = demand
ca_file = $STANDIN_TLS_CA
# Which users changed: each node's Dovecot names them on its FIFO (the
# replication plugin); the master's standin-imaprepl relays them through etcd.
changes = dovecot
dovecot_fifo.a = $STANDIN_IMAP_A_RUN_DIR/replication-notify-fifo
dovecot_fifo.b = $STANDIN_IMAP_B_RUN_DIR/replication-notify-fifo
dovecot_fifo_user = $STANDIN_IMAP_A_MAIL_USER

[proxy]
# What clients use instead of a floating IP: each node's proxy sends them
# to the current master.
pg_listen.a = 127.0.0.1:$PROXY_PG_A
ldap_listen.a = 127.0.0.1:$PROXY_LDAP_A
imap_listen.a = 127.0.0.1:$PROXY_IMAP_A
pg_listen.b = 127.0.0.1:$PROXY_PG_B
ldap_listen.b = 127.0.0.1:$PROXY_LDAP_B
imap_listen.b = 127.0.0.1:$PROXY_IMAP_B
EOF
	mkdir -p "$box"/{a,b}/standin/{state,run}
}

# Some groupware data on the master (node a): a table, a directory entry
# and a mail.
write_demo_data() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local psql=(/usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1)
	runuser -u postgres -- "${psql[@]}" -h "$STANDIN_PG_A_SOCKET_DIR" -p "$STANDIN_PG_A_PORT" \
		-d postgres -c "CREATE DATABASE groupware OWNER $STANDIN_PG_A_USER" >/dev/null
	runuser -u postgres -- "${psql[@]}" -h "$STANDIN_PG_B_SOCKET_DIR" -p "$STANDIN_PG_B_PORT" \
		-d postgres -c "CREATE DATABASE groupware OWNER $STANDIN_PG_B_USER" >/dev/null
	PGPASSFILE=$box/conf/pgpass "${psql[@]}" \
		"host=$STANDIN_PG_A_HOST port=$STANDIN_PG_A_PORT user=$STANDIN_PG_A_USER dbname=groupware" <<'SQL'
CREATE TABLE contacts (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE);
INSERT INTO contacts (name, email) VALUES
    ('Alice Liddell', 'alice@example.com'), ('Bob Dylan', 'bob@example.com');
SQL
	ldapadd -x -H "$STANDIN_LDAP_A_URI" -D "$STANDIN_LDAP_A_ROOTDN" -y "$box/conf/ldap.secret" \
		>/dev/null <<EOF
dn: uid=alice,ou=people,$STANDIN_LDAP_A_SUFFIX
objectClass: inetOrgPerson
uid: alice
cn: Alice Liddell
sn: Liddell
mail: alice@example.com
EOF
	"$py" - "$STANDIN_IMAP_A_HOST" "$STANDIN_IMAP_A_PORT" "$box/conf/imap.secret" <<'PY'
import imaplib, sys, email.utils
host, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(secret) as f:
    password = f.read()
msg = (f"From: bob@example.com\r\nTo: alice@example.com\r\nSubject: welcome to standin\r\n"
       f"Date: {email.utils.formatdate()}\r\nMessage-ID: <sandbox-1@example.com>\r\n\r\n"
       f"Hello Alice.\r\n").encode()
with imaplib.IMAP4(host, port) as c:
    c.login('"alice*standin"', password)
    c.append("INBOX", None, None, msg)
PY
}

show_data() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local n up
	for n in a b; do
		up=${n^^}
		local host_var=STANDIN_PG_${up}_HOST port_var=STANDIN_PG_${up}_PORT
		local uri_var=STANDIN_LDAP_${up}_URI
		echo "node $n:"
		printf '  pg    contacts: '
		PGPASSFILE=$box/conf/pgpass /usr/lib/postgresql/15/bin/psql -X -A -t -q \
			"host=${!host_var} port=${!port_var} user=$STANDIN_PG_A_USER dbname=groupware" \
			-c "SELECT count(*) FROM contacts" 2>/dev/null || echo "(no table yet)"
		printf '  ldap  people:   '
		ldapsearch -x -LLL -H "${!uri_var}" -D "$STANDIN_LDAP_A_ROOTDN" \
			-y "$box/conf/ldap.secret" -b "ou=people,$STANDIN_LDAP_A_SUFFIX" \
			'(objectClass=inetOrgPerson)' 1.1 2>/dev/null | grep -c '^dn:' || true
		local ihost_var=STANDIN_IMAP_${up}_HOST iport_var=STANDIN_IMAP_${up}_PORT
		printf '  imap  alice INBOX: '
		"$py" - "${!ihost_var}" "${!iport_var}" "$box/conf/imap.secret" <<'PY'
import imaplib, sys
host, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(secret) as f:
    password = f.read()
with imaplib.IMAP4(host, port) as c:
    c.login('"alice*standin"', password)
    typ, data = c.status("INBOX", "(MESSAGES)")
    print(data[0].decode().split("MESSAGES ")[1].rstrip(")"), "messages")
PY
	done
}

# start_daemon NAME PATH NODE: run a standin daemon in the background for NODE
# (its own pidfile and status socket in the node's run_dir, log in the sandbox).
start_daemon() {
	local name=$1 path=$2 node=$3
	local log=$box/$node/standin/$name.log
	setsid "$build/$path" -c "$conf" -n "$node" >>"$log" 2>&1 </dev/null &
	echo "$name for node $node started (pid $!, log $log)"
}

# wait_proxy NODE: poll until node NODE's proxy answers its status (30 s).
wait_proxy() {
	local sock=$box/$1/standin/run/standin-proxy.sock i
	for ((i = 0; i < 300; i++)); do
		echo status | socat -t 2 - "UNIX-CONNECT:$sock" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "standin-proxy on node $1 does not answer; its log:" >&2
	tail -20 "$box/$1/standin/standin-proxy.log" >&2
	return 1
}

# wait_streaming NODE NAME [STATE]: poll the daemon's status until it is in
# STATE (default streaming; 90 s).
wait_streaming() {
	local node=$1 name=$2 want=${3:-streaming} i state=
	local sock=$box/$node/standin/run/$name.sock
	for ((i = 0; i < 900; i++)); do
		state=$(echo status | socat -t 2 - "UNIX-CONNECT:$sock" 2>/dev/null |
			"$py" -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null) || true
		[ "$state" = "$want" ] && return 0
		sleep 0.1
	done
	echo "$name on node $node is not $want (state: ${state:-no answer}); its log:" >&2
	tail -20 "$box/$node/standin/$name.log" >&2
	return 1
}

pg_a() {
	PGPASSFILE=$box/conf/pgpass /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 \
		"host=$STANDIN_PG_A_HOST port=$STANDIN_PG_A_PORT user=$STANDIN_PG_A_USER dbname=groupware" "$@"
}

pg_b() {
	PGPASSFILE=$box/conf/pgpass /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 \
		"host=$STANDIN_PG_B_HOST port=$STANDIN_PG_B_PORT user=$STANDIN_PG_B_USER dbname=groupware" "$@"
}

# psql through node N's standin-proxy (which sends it to the master).
pg_proxy() {
	local node=$1 port_var
	shift
	# shellcheck disable=SC1091
	. "$box/proxy.env"
	port_var=PROXY_PG_${node^^}
	PGPASSFILE=$box/conf/pgpass /usr/lib/postgresql/15/bin/psql -X -q -v ON_ERROR_STOP=1 \
		"host=127.0.0.1 port=${!port_var} user=$STANDIN_PG_A_USER dbname=groupware" "$@"
}

# More writes on the master, now that the stream runs: DML and DDL, sent
# through node b's proxy, which forwards them to the master (a).
write_more_data() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	echo "psql to node b's proxy lands on the server with port $(pg_proxy b -A -t -c "SHOW port") (node a, the master, has $STANDIN_PG_A_PORT)"
	pg_proxy b <<'SQL'
INSERT INTO contacts (name, email) VALUES ('Carol Ann Duffy', 'carol@example.com');
ALTER TABLE contacts ADD COLUMN phone text;
UPDATE contacts SET phone = '+44 20 7946 0000' WHERE name LIKE 'Alice%';
SQL
}

ldap_people() {
	ldapsearch -x -LLL -o ldif_wrap=no -H "$1" -D "$STANDIN_LDAP_A_ROOTDN" \
		-y "$box/conf/ldap.secret" -b "ou=people,$STANDIN_LDAP_A_SUFFIX" \
		'(objectClass=inetOrgPerson)' '*' entryUUID 2>/dev/null | sort
}

write_more_ldap() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	ldapmodify -x -H "$STANDIN_LDAP_A_URI" -D "$STANDIN_LDAP_A_ROOTDN" \
		-y "$box/conf/ldap.secret" >/dev/null <<EOF
dn: uid=bob,ou=people,$STANDIN_LDAP_A_SUFFIX
changetype: add
objectClass: inetOrgPerson
uid: bob
cn: Bob Dylan
sn: Dylan
mail: bob@example.com

dn: uid=bob,ou=people,$STANDIN_LDAP_A_SUFFIX
changetype: modrdn
newrdn: uid=robert
deleteoldrdn: 1
EOF
}

# write_more_mail: a message for alice through node b's IMAP proxy (which
# sends it to the master, node a), and a flag on the first one.
write_more_mail() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	# shellcheck disable=SC1091
	. "$box/proxy.env"
	"$py" - "$PROXY_IMAP_B" "$box/conf/imap.secret" <<'PY'
import imaplib, sys, email.utils
port, secret = int(sys.argv[1]), sys.argv[2]
with open(secret) as f:
    password = f.read()
msg = (f"From: carol@example.com\r\nTo: alice@example.com\r\nSubject: through the proxy\r\n"
       f"Date: {email.utils.formatdate()}\r\nMessage-ID: <sandbox-2@example.com>\r\n\r\n"
       f"Sent to node b's proxy, stored on the master, copied to the standby.\r\n").encode()
with imaplib.IMAP4("127.0.0.1", port) as c:
    c.login('"alice*standin"', password)
    c.append("INBOX", r"(\Flagged)", None, msg)
    c.select("INBOX")
    c.uid("STORE", "1", "+FLAGS", r"(\Seen)")
PY
}

# imap_digest URI_HOST PORT: alice's INBOX as "count flags..." for comparison.
imap_digest() {
	"$py" - "$1" "$2" "$box/conf/imap.secret" <<'PY'
import hashlib, imaplib, sys
host, port, secret = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(secret) as f:
    password = f.read()
with imaplib.IMAP4(host, port) as c:
    c.login('"alice*standin"', password)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[])")
    parts = sorted(repr(d[0].split(b"FLAGS")[1].split(b")")[0]).encode() + hashlib.sha256(d[1]).digest()
                   for d in data if isinstance(d, tuple))
    print(len(parts), hashlib.sha256(b"".join(parts)).hexdigest()[:16])
PY
}

# wait_imap_equal: poll until alice's INBOX on node b equals node a's (30 s).
wait_imap_equal() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local a b i
	for ((i = 0; i < 300; i++)); do
		a=$(imap_digest "$STANDIN_IMAP_A_HOST" "$STANDIN_IMAP_A_PORT" 2>/dev/null) || true
		b=$(imap_digest "$STANDIN_IMAP_B_HOST" "$STANDIN_IMAP_B_PORT" 2>/dev/null) || true
		if [ -n "$a" ] && [ "$a" = "$b" ]; then
			echo "alice's INBOX on node b equals node a's, flags included (${a%% *} messages)"
			return 0
		fi
		sleep 0.1
	done
	echo "node b's mailboxes did not catch up with node a's" >&2
	return 1
}

# wait_ldap_equal: poll until node b's people (with entryUUIDs) equal node a's (30 s).
wait_ldap_equal() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local a b i
	for ((i = 0; i < 300; i++)); do
		a=$(ldap_people "$STANDIN_LDAP_A_URI")
		b=$(ldap_people "$STANDIN_LDAP_B_URI")
		if [ -n "$a" ] && [ "$a" = "$b" ]; then
			echo "people on node b equal node a's, entryUUIDs included ($(grep -c '^dn:' <<<"$a") entries)"
			return 0
		fi
		sleep 0.1
	done
	echo "node b's directory did not catch up with node a's" >&2
	return 1
}

# wait_pg_equal: poll until node b's contacts equal node a's (30 s).
wait_pg_equal() {
	# shellcheck disable=SC1091
	. "$box/servers.env"
	local q="SELECT md5(string_agg(c::text, '|' ORDER BY id)) FROM contacts c" a b i
	for ((i = 0; i < 300; i++)); do
		a=$(pg_a -A -t -c "$q")
		b=$(pg_b -A -t -c "$q" 2>/dev/null) || true
		if [ -n "$a" ] && [ "$a" = "$b" ]; then
			echo "contacts on node b equal node a's (md5 $a)"
			return 0
		fi
		sleep 0.1
	done
	echo "node b's contacts did not catch up with node a's" >&2
	return 1
}

# wait_ready NODE: poll until a switchover to NODE passes its checks (90 s).
wait_ready() {
	local i out=
	for ((i = 0; i < 900; i++)); do
		out=$("$ctl" -c "$conf" -n a switchover --to "$1" --dry-run 2>&1) && return 0
		sleep 0.1
	done
	echo "a switchover to $1 is not possible yet:" >&2
	echo "$out" >&2
	return 1
}

# start_writer: a client that commits one row after another through node
# a's proxy, as fast as it can, noting each acknowledged id and its time in
# $box/writer.log, until $box/writer.stop exists.
start_writer() {
	# shellcheck disable=SC1091
	. "$box/proxy.env"
	rm -f "$box/writer.stop" "$box/writer.log"
	pg_a -c "CREATE TABLE IF NOT EXISTS demo_writes (id int PRIMARY KEY, at timestamptz DEFAULT now())"
	PGPASSFILE=$box/conf/pgpass setsid "$py" - "$PROXY_PG_A" "$STANDIN_PG_A_USER" "$box" \
		>/dev/null 2>&1 </dev/null <<'PY' &
import os, subprocess, sys, time
port, user, box = sys.argv[1:4]
n = 0
with open(os.path.join(box, "writer.log"), "w", buffering=1) as log:
    while not os.path.exists(os.path.join(box, "writer.stop")):
        p = subprocess.Popen(["/usr/lib/postgresql/15/bin/psql", "-X", "-At", "-q", "-h", "127.0.0.1",
                              "-p", port, "-U", user, "-d", "groupware"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            while not os.path.exists(os.path.join(box, "writer.stop")):
                n += 1
                p.stdin.write(f"INSERT INTO demo_writes (id) VALUES ({n}) RETURNING 'ack ' || id;\n"
                              f"\\echo done {n}\n")
                p.stdin.flush()
                while True:
                    line = p.stdout.readline()
                    if not line:
                        raise BrokenPipeError
                    if line.strip() == f"ack {n}":
                        log.write(f"{n} {time.monotonic():.6f}\n")
                    if line.strip() == f"done {n}":
                        break
        except (BrokenPipeError, OSError):
            pass
        finally:
            p.kill()
            p.wait()
PY
	echo $! >"$box/writer.pid"
	echo "writer started: INSERTs through node a's proxy (port $PROXY_PG_A), log $box/writer.log"
}

# wait_writer N: poll until the client has N more acknowledged commits (60 s).
wait_writer() {
	local want i
	want=$(($(wc -l <"$box/writer.log" 2>/dev/null || echo 0) + $1))
	for ((i = 0; i < 600; i++)); do
		[ "$(wc -l <"$box/writer.log" 2>/dev/null || echo 0)" -ge "$want" ] && return 0
		sleep 0.1
	done
	die "the client through the proxy does not get its commits acknowledged"
}

# writer_report: how many commits were acknowledged and the longest time
# the client waited between two of them.
writer_report() {
	"$py" - "$box/writer.log" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
t = [float(r[1]) for r in rows]
gap = max((b - a for a, b in zip(t, t[1:])), default=0)
print(f"the client had {len(rows)} commits acknowledged; its longest wait between two: {gap:.2f} s")
PY
}

# stop_writer: stop the client, then check that every acknowledged id is on
# both nodes (30 s for the standby to catch up).
stop_writer() {
	local i pid ids q ma='' mb='' n
	touch "$box/writer.stop"
	pid=$(cat "$box/writer.pid")
	for ((i = 0; i < 300; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	n=$(wc -l <"$box/writer.log")
	ids=$("$py" -c 'import sys
print(",".join(sorted({l.split()[0] for l in open(sys.argv[1]) if l.strip()})) or "0")' "$box/writer.log")
	q="SELECT count(*) FROM unnest('{$ids}'::int[]) x WHERE NOT EXISTS (SELECT 1 FROM demo_writes d WHERE d.id = x)"
	for ((i = 0; i < 300; i++)); do
		ma=$(pg_a -A -t -c "$q") || true
		mb=$(pg_b -A -t -c "$q" 2>/dev/null) || true
		[ "$ma" = 0 ] && [ "$mb" = 0 ] && break
		sleep 0.1
	done
	[ "$ma" = 0 ] || die "$ma acknowledged commits are missing on node a"
	[ "$mb" = 0 ] || die "$mb acknowledged commits are missing on node b"
	echo "every acknowledged commit ($n) is on node a and on node b, none twice (primary key)"
}

# stop_daemons: SIGTERM every standin daemon of the sandbox (by pidfile).
stop_daemons() {
	local pidfile pid i
	for pidfile in "$box"/*/standin/run/standin-*.pid; do
		[ -f "$pidfile" ] || continue
		pid=$(cat "$pidfile" 2>/dev/null) || continue
		{ [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || continue
		kill -TERM "$pid"
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		echo "$(basename "$pidfile" .pid) (pid $pid): stopped"
	done
}

start() {
	[ "$(id -u)" -eq 0 ] || die "run as root (the servers run as postgres and nobody)"
	if [ -f "$box/servers.json" ] && "$py" "$harness" status "$box" >/dev/null 2>&1; then
		echo "the sandbox in $box is already running; ./sandbox.sh stop first"
		status
		return 0
	fi
	install_and_build
	say "starting PostgreSQL, slapd and Dovecot on nodes a and b in $box"
	if [ -f "$box/servers.json" ]; then
		stop_daemons >/dev/null
		"$py" "$harness" down "$box" >/dev/null || true
	fi
	# The servers load standin_ddl (DDL capture) from this build.
	STANDIN_BUILDDIR=$build "$py" "$harness" up "$box" --no-fsync --etcd --dovecot-notices --tls
	write_config
	say "configuration $conf"
	"$ctl" -c "$conf" config check
	say "cluster state in etcd: node a is the master (epoch 1); node b takes it"
	"$ctl" -c "$conf" -n a state init --master a
	"$ctl" -c "$conf" -n b state pull
	"$ctl" -c "$conf" -n b state show
	say "writing some data on the master (node a)"
	write_demo_data
	show_data
	say "standin-pgrepl on both nodes: b copies a's database, then streams; a idles as master"
	start_daemon standin-pgrepl replicators/pg/standin-pgrepl a
	start_daemon standin-pgrepl replicators/pg/standin-pgrepl b
	wait_streaming b standin-pgrepl
	say "standin-ldaprepl on both nodes: b refreshes from a's syncprov, then persists"
	start_daemon standin-ldaprepl replicators/ldap/standin-ldaprepl a
	start_daemon standin-ldaprepl replicators/ldap/standin-ldaprepl b
	wait_streaming b standin-ldaprepl persisting
	say "standin-imaprepl on both nodes: b copies every user's mailboxes, then follows the users a's Dovecot names"
	start_daemon standin-imaprepl replicators/imap/standin-imaprepl a
	start_daemon standin-imaprepl replicators/imap/standin-imaprepl b
	wait_streaming b standin-imaprepl
	say "standin-proxy on both nodes: clients of either node reach the master"
	start_daemon standin-proxy proxy/standin-proxy a
	start_daemon standin-proxy proxy/standin-proxy b
	wait_proxy b
	say "more writes on the master, through the streams: INSERT, ALTER TABLE, UPDATE; an LDAP add and rename; a mail through node b's proxy"
	write_more_data
	write_more_ldap
	write_more_mail
	wait_pg_equal
	wait_ldap_equal
	wait_imap_equal
	show_data
	say "standin-failoverd on both nodes: each publishes its node to etcd and carries out its steps"
	start_daemon standin-failoverd failover/standin-failoverd a
	start_daemon standin-failoverd failover/standin-failoverd b
	wait_ready b
	say "a client writes through node a's proxy all along"
	start_writer
	wait_writer 200
	say "switchover a -> b (standinctl switchover --to b, through etcd)"
	"$ctl" -c "$conf" -n a switchover --to b
	wait_writer 200
	writer_report
	say "the streams turned around: b is the master, a replicates from it"
	wait_ready a
	"$ctl" -c "$conf" status || true
	say "switchover b -> a, the client still writing"
	"$ctl" -c "$conf" -n b switchover --to a
	wait_writer 200
	wait_ready b
	stop_writer
	writer_report
	cat <<EOF

Replicated: PostgreSQL (standin-pgrepl), LDAP (standin-ldaprepl) and IMAP
(standin-imaprepl); clients go through standin-proxy on either node; the
master moved a -> b -> a with standinctl switchover while a client wrote,
nothing acknowledged lost.
EOF
	say "standinctl status"
	"$ctl" -c "$conf" status || true
	cat <<EOF

The sandbox keeps running.  Try:
  $ctl -c $conf status
  $ctl -c $conf -n a switchover --to b
  $ctl -c $conf config show
  . $box/servers.env   # STANDIN_PG_A_PORT, STANDIN_LDAP_A_URI, ...
Stop it with: ./sandbox.sh stop
EOF
}

stop() {
	if [ ! -f "$box/servers.json" ]; then
		echo "no sandbox in $box"
		return 0
	fi
	stop_daemons
	"$py" "$harness" down "$box"
	echo "stopped; files kept in $box"
}

status() {
	[ -f "$box/servers.json" ] || die "no sandbox in $box (./sandbox.sh starts one)"
	"$py" "$harness" status "$box" || true
	[ -x "$ctl" ] && [ -f "$conf" ] && { "$ctl" -c "$conf" status || true; }
}

case ${1:-start} in
start) start ;;
stop) stop ;;
status) status ;;
-h | --help | help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command '$1' (start, stop or status)" ;;
esac
