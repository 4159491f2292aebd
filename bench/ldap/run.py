#!/usr/bin/python3
"""standin-ldaprepl against slapd's own syncrepl consumer, side by side.

One master slapd (a, syncprov, N inetOrgPerson entries loaded with slapadd
before its start) and two standbys replicating from it: slapd b written by
standin-ldaprepl (--build), and slapd c, a consumer with a plain
`syncrepl ... type=refreshAndPersist` directive.  All three from the test
harness (tests/lib/standin_harness.py).  Only the side being measured runs:
the other side's replication (standin-ldaprepl and slapd b, or slapd c) is
stopped; the side going first alternates by round.

  (a) full refresh into an empty standby (no base entries; standin's state
      and cookie wiped, slapd c's database wiped): from the start of the
      replicator (standin-ldaprepl, or slapd c with its syncrepl directive)
      until every entry of the master is on the standby -> entries/s
  (b) change latency: COUNT single modifies of one entry on the master, one
      at a time, from ldap_modify_ext_s returning on the master to the
      standby answering a base search (description=VALUE); standby polled
      every POLL_US on a persistent connection (latency.c, built here)

See README.md next to this file for the exact criteria.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True   # no __pycache__ in tests/ (other people's directories)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import BenchError, loadavg, log, median, out, percentile, preamble  # noqa: E402

SIDES = ("standin", "slapd")
PROGRAMS = ("replicators/ldap/standin-ldaprepl", "tools/standinctl")
LDAPSEARCH = "/usr/bin/ldapsearch"
POLL = 0.02                      # seconds between checks in the timed waits (a), at first


def poll_pause(t0):
    """Sleep between two checks of a refresh started at T0: 20 ms at first,
    then 0.5% of the time so far (at most 0.5 s).  Each check is an
    ldapsearch process; at 20 ms all along they took a fifth of the two
    cores' samples during a refresh, from both sides' replication alike."""
    time.sleep(min(0.5, max(POLL, 0.005 * (time.monotonic() - t0))))


def people_ldif(suffix, count):
    """The master's whole content for slapadd: suffix, ou=people, COUNT people."""
    dc = suffix.split(",")[0].split("=", 1)[1]
    parts = [f"dn: {suffix}\nobjectClass: dcObject\nobjectClass: organization\ndc: {dc}\no: {dc}\n",
             f"dn: ou=people,{suffix}\nobjectClass: organizationalUnit\nou: people\n"]
    for i in range(count):
        parts.append(
            f"dn: uid=u{i},ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: u{i}\n"
            f"cn: User Number {i}\nsn: Surname{i}\ngivenName: Given{i}\n"
            f"mail: u{i}@example.com\ntelephoneNumber: +1 555 {i % 10000:04d}\n"
            f"title: Engineer grade {i % 7}\ndepartmentNumber: {i % 97}\n"
            f"employeeNumber: {100000 + i}\ndescription: benchmark person {i}\n")
    return "\n".join(parts) + "\n"


class Bench:
    def __init__(self, args):
        self.args = args
        self.h = sh.Harness("bench-ldap")
        self.pw = "pw-" + os.urandom(8).hex()
        self.n_total = args.entries + 2          # suffix and ou=people too
        self.daemon = None
        self.errors = []                         # standin-ldaprepl errors seen in its status
        a = sh.SlapdServer(self.h, "a", "master", password=self.pw, debug=args.slapd_debug)
        self.a = a
        self.suffix = a.suffix
        self.people = f"ou=people,{self.suffix}"
        # The master's content, loaded before its first start (slapadd makes
        # entryUUID, entryCSN and the timestamps; -w writes the contextCSN).
        ldif = self.h.path("master.ldif")
        with open(ldif, "w") as f:
            f.write(people_ldif(self.suffix, args.entries))
        t = time.monotonic()
        sh.run(["/usr/sbin/slapadd", "-q", "-w",
                "-f", a.conf, "-l", ldif], timeout=900)
        log(f"master: slapadd of {self.n_total} entries in {time.monotonic() - t:.1f}s")
        a.start()
        # standin's standby: slapd b, empty (no base entries)
        self.b = sh.SlapdServer(self.h, "b", "standby", password=self.pw, load_base=False,
                                debug=args.slapd_debug)
        # slapd's own consumer: slapd c with a syncrepl directive (default-like)
        syncrepl = (f'syncrepl rid=001 provider={a.uri} type=refreshAndPersist '
                    f'searchbase="{self.suffix}" bindmethod=simple binddn="{a.rootdn}" '
                    f'credentials={self.pw} retry="1 +"\n')
        self.c = sh.SlapdServer(self.h, "c", "standby", password=self.pw, load_base=False,
                                server_id=3, extra_conf=syncrepl, debug=args.slapd_debug)
        self.base = self.h.mkdir("standin")
        self.conf = self.write_conf()
        self.ldaprepl_log = os.path.join(self.base, "ldaprepl-b.log")
        self.expected = None

    # -- standin -------------------------------------------------------------

    def write_conf(self):
        text = "[cluster]\nname = benchldap\n"
        for s in (self.a, self.b):
            text += (f"[node {s.node}]\naddress = {s.host}\n"
                     f"state_dir = {self.base}/{s.node}/state\nrun_dir = {self.base}/{s.node}/run\n")
        text += "[ldap]\n"
        for s in (self.a, self.b):
            text += f"endpoint.{s.node} = {s.uri}\n"
        text += (f"suffix = {self.suffix}\nbind_dn = {self.a.rootdn}\n"
                 f"password_file = {self.a.password_file}\n")
        path = os.path.join(self.base, "standin.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def standin_reset(self):
        """Fresh cluster state and no cookie (the standby starts from nothing)."""
        for node in ("a", "b"):
            for d in ("state", "run"):
                p = os.path.join(self.base, node, d)
                shutil.rmtree(p, ignore_errors=True)
                os.makedirs(p)
        for node in ("a", "b"):
            r = sb.run(sb.STANDINCTL, "-c", self.conf, "-n", node, "state", "init", "--master", "a")
            if r.returncode != 0:
                raise BenchError(f"standinctl state init: {r.stderr}")

    def standin_start(self):
        if self.daemon is None:
            self.daemon = sb.StandinDaemon(LDAPREPL, self.conf, "b", os.path.join(self.base, "b", "run"),
                                           self.ldaprepl_log)
            self.h.add_cleanup(self.daemon.stop)
        else:
            self.daemon.start()

    def standin_status(self):
        if not self.daemon.running():
            raise sh.StopWaiting(f"standin-ldaprepl exited {self.daemon.proc.returncode}:\n"
                                 f"{self.daemon.output()[-3000:]}")
        try:
            st = self.daemon.status()
        except (OSError, ValueError):
            return None
        if st.get("last_error") and st["last_error"] not in [e[1] for e in self.errors]:
            self.errors.append((st.get("state"), st["last_error"]))
        return st

    def standin_stop(self):
        if self.daemon is not None and self.daemon.running():
            self.daemon.stop()

    # -- sides -----------------------------------------------------------------

    def standby(self, side):
        return self.b if side == "standin" else self.c

    def stop_side(self, side):
        if side == "standin":
            self.standin_stop()
            if self.b.is_running():
                self.b.stop()
        elif self.c.is_running():
            self.c.stop()

    @staticmethod
    def wipe_db(server):
        for name in os.listdir(server.dbdir):
            os.unlink(os.path.join(server.dbdir, name))

    def dns(self, server):
        """The set of DNs (lowercased) on SERVER."""
        r = subprocess.run([LDAPSEARCH, "-x", "-H", server.uri, "-D", server.rootdn, "-y",
                            server.password_file, "-LLL", "-o", "ldif_wrap=no", "-b", self.suffix,
                            "(objectClass=*)", "1.1"], capture_output=True, text=True, timeout=120)
        if r.returncode == 32:
            return set()
        if r.returncode != 0:
            raise BenchError(f"ldapsearch on {server.name}: {r.stderr.strip()}")
        return {line[4:].lower() for line in r.stdout.splitlines() if line.startswith("dn: ")}

    def exists(self, server, dn):
        r = subprocess.run([LDAPSEARCH, "-x", "-H", server.uri, "-D", server.rootdn, "-y",
                            server.password_file, "-LLL", "-s", "base", "-b", dn, "(objectClass=*)",
                            "1.1"], capture_output=True, text=True, timeout=30)
        if r.returncode not in (0, 32):
            raise BenchError(f"ldapsearch on {server.name}: {r.stderr.strip()}")
        return r.returncode == 0 and "dn:" in r.stdout

    # -- (a) full refresh ------------------------------------------------------

    def refresh(self, side, rnd):
        """Empty standby, start the replicator, time until it has every entry."""
        other = "slapd" if side == "standin" else "standin"
        self.stop_side(other)
        self.stop_side(side)
        server = self.standby(side)
        self.wipe_db(server)
        last_dn = f"uid=u{self.args.entries - 1},{self.people}"
        if side == "standin":
            server.start()
            if self.dns(server):
                raise BenchError("slapd b is not empty")
            self.standin_reset()
            log(f"(a) round {rnd} standin: loadavg {loadavg()}; starting standin-ldaprepl")
            t0 = time.monotonic()
            self.standin_start()
        else:
            log(f"(a) round {rnd} slapd: loadavg {loadavg()}; starting slapd c (syncrepl)")
            t0 = time.monotonic()
            server.start()
        states = {}

        def check_alive():
            self.h.check_alive()
            if side == "standin":
                st = self.standin_status()
                if st is not None and st.get("state") not in states:
                    states[st.get("state")] = time.monotonic() - t0
        # 1. the last entry of the master's refresh order is there
        deadline = t0 + self.args.timeout
        while True:
            check_alive()
            if self.exists(server, last_dn):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{side}: {last_dn} not on the standby after {self.args.timeout}s")
            poll_pause(t0)
        # 2. then all of them: list the DNs, poll the missing ones (if any)
        t_check = time.monotonic()
        have = self.dns(server)
        missing = self.expected - have
        extra = have - self.expected
        if extra:
            raise BenchError(f"{side}: {len(extra)} entries the master does not have, e.g. {sorted(extra)[:3]}")
        while missing:
            check_alive()
            if time.monotonic() > deadline:
                raise BenchError(f"{side}: {len(missing)} entries missing after {self.args.timeout}s, "
                                 f"e.g. {sorted(missing)[:3]}")
            t_check = time.monotonic()
            missing = {dn for dn in missing if not self.exists(server, dn)}
            if missing:
                poll_pause(t0)
        elapsed = t_check - t0
        rate = self.n_total / elapsed
        extra_info = ""
        if side == "standin":
            st = sh.wait_until(lambda: (lambda s: s if s and s.get("state") == "persisting" else None)(
                self.standin_status()), 120, "standin-ldaprepl state persisting")
            states.setdefault("persisting", time.monotonic() - t0)
            extra_info = (f"; status: refresh_entries {st.get('refresh_entries')}, session "
                          f"{st.get('session')}, states at "
                          + ", ".join(f"{k} {v:.2f}s" for k, v in states.items()))
        log(f"(a) round {rnd} {side}: {self.n_total} entries in {elapsed:.2f}s = {rate:.0f} "
            f"entries/s{extra_info}; loadavg {loadavg()}")
        return elapsed, rate

    # -- (b) latency -----------------------------------------------------------

    def latency(self, side, rnd):
        other = "slapd" if side == "standin" else "standin"
        self.stop_side(other)
        server = self.standby(side)
        if side == "standin":
            if not self.b.is_running():
                self.b.start()
            if self.daemon is None or not self.daemon.running():
                self.standin_start()
        elif not self.c.is_running():
            self.c.start()
        dn = f"uid=u0,{self.people}"
        # catch up (and warm up): a few changes, each waited for (long timeout)
        self.run_latency(server, dn, f"warm-{side}-{rnd}", self.args.warmup, 300)
        if side == "standin":
            st = self.standin_status()
            if st and st.get("state") != "persisting":
                raise BenchError(f"standin-ldaprepl is {st.get('state')} after the warm-up")
        log(f"(b) round {rnd} {side}: loadavg {loadavg()}; {self.args.changes} modifies")
        rows = self.run_latency(server, dn, f"r{rnd}-{side}", self.args.changes, 30)
        lat = [r[2] / 1000.0 for r in rows]          # ms
        wr = [r[1] / 1000.0 for r in rows]
        res = dict(p50=percentile(lat, 50), p99=percentile(lat, 99), mean=statistics.fmean(lat),
                   max=max(lat), write_p50=percentile(wr, 50), lat=lat)
        log(f"(b) round {rnd} {side}: latency p50 {res['p50']:.2f} ms, p99 {res['p99']:.2f} ms, "
            f"mean {res['mean']:.2f} ms, max {res['max']:.2f} ms (master modify p50 "
            f"{res['write_p50']:.2f} ms); loadavg {loadavg()}")
        if side == "standin":
            st = self.standin_status()
            log(f"(b) round {rnd} standin status: state {st.get('state')}, lag {st.get('lag_seconds')}, "
                f"session {st.get('session')}, last_error {st.get('last_error')}")
        self.stop_side(side)
        return res

    def run_latency(self, server, dn, tag, count, timeout):
        argv = [self.latency_bin, self.a.uri, server.uri, self.a.rootdn, self.a.password_file, dn,
                tag, str(count), str(self.args.poll_us), str(timeout)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rows = []
        for line in proc.stdout:
            i, w, l = line.split()
            rows.append((int(i), float(w), float(l)))
            if len(rows) % 100 == 0:
                self.h.check_alive()
                if server is self.b:
                    self.standin_status()
        err = proc.stderr.read()
        if proc.wait() != 0 or len(rows) != count:
            raise BenchError(f"latency helper ({server.name}) exited {proc.returncode}: {err.strip()}")
        return rows



def main():
    global sh, sb, LDAPREPL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="/tmp/bench-ldap-build",
                   help="configured build directory (CFLAGS=-O2 -g, no sanitizers)")
    p.add_argument("--no-make", action="store_true", help="do not run make in --build first")
    p.add_argument("--only", default="a,b", help="a (full refresh), b (latency) or a,b")
    p.add_argument("--entries", type=int, default=50000)
    p.add_argument("--changes", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=20, help="changes before each latency round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--first", choices=SIDES, default="standin", help="who goes first in odd rounds")
    p.add_argument("--poll-us", type=int, default=200, help="(b): standby polled every POLL_US")
    p.add_argument("--timeout", type=float, default=600, help="(a): seconds allowed per refresh")
    p.add_argument("--slapd-debug", default="0",
                   help="slapd -d level for all three servers (0: no per-operation log)")
    p.add_argument("--keep", action="store_true", help="keep the servers' directories")
    args = p.parse_args()
    only = set(args.only.split(","))
    build = os.path.abspath(args.build)
    os.environ["STANDIN_BUILDDIR"] = build
    if args.keep:
        os.environ["STANDIN_KEEP_TMP"] = "1"
    import standin_harness as sh_mod
    import standin_bin as sb_mod
    sh, sb = sh_mod, sb_mod
    LDAPREPL = PROGRAMS[0]

    slapd_v = subprocess.run([sh.SLAPD, "-VV"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True).stdout.strip().splitlines()[0]
    commit = preamble("bench/ldap: standin-ldaprepl against slapd's syncrepl consumer", ROOT, build, PROGRAMS,
             sb.program, f"slapd: {slapd_v}", make=not args.no_make)
    latency_bin = os.path.join(build, "bench-ldap-latency")
    subprocess.run(["cc", "-O2", "-Wall", "-o", latency_bin, os.path.join(HERE, "latency.c"),
                    "-lldap", "-llber"], check=True)
    out(f"options: entries {args.entries}, changes {args.changes}, rounds {args.rounds}, first "
        f"{args.first}, poll {args.poll_us} us, slapd -d {args.slapd_debug}")
    load_before = loadavg()
    out(f"loadavg before: {load_before}")
    out()

    bench = None
    failed = True
    results_a = {s: [] for s in SIDES}
    results_b = {s: [] for s in SIDES}
    try:
        bench = Bench(args)
        bench.latency_bin = latency_bin
        bench.expected = bench.dns(bench.a)
        if len(bench.expected) != bench.n_total:
            raise BenchError(f"master has {len(bench.expected)} entries, expected {bench.n_total}")
        order0 = list(SIDES) if args.first == "standin" else list(reversed(SIDES))
        if "a" in only or "b" in only:
            # (a) always runs at least once: (b) needs populated standbys
            rounds_a = args.rounds if "a" in only else 1
            for rnd in range(1, rounds_a + 1):
                order = order0 if rnd % 2 == 1 else list(reversed(order0))
                for side in order:
                    elapsed, rate = bench.refresh(side, rnd)
                    results_a[side].append((elapsed, rate))
        if "b" in only:
            for rnd in range(1, args.rounds + 1):
                order = order0 if rnd % 2 == 1 else list(reversed(order0))
                for side in order:
                    results_b[side].append(bench.latency(side, rnd))
        failed = False
    except (BenchError, sh.HarnessError) as e:
        log(f"FAILED: {e}")
    finally:
        if bench is not None:
            if os.path.exists(bench.ldaprepl_log):
                with open(bench.ldaprepl_log, errors="replace") as f:
                    lines = f.read().splitlines()
                bad = [l for l in lines if any(w in l.lower() for w in ("error", "warn", "fatal", "conflict"))]
                out(f"\nstandin-ldaprepl log: {len(lines)} lines, {len(bad)} with error/warn/fatal/conflict")
                for l in bad[:20]:
                    out("  " + l)
            if bench.errors:
                out("standin-ldaprepl last_error values seen in its status:")
                for state, e in bench.errors:
                    out(f"  ({state}) {e}")
            try:
                bench.h.close(failed=failed)
            except sh.HarnessError as e:
                out(f"harness: {e}")
    load_after = loadavg()

    out("\nSUMMARY")
    out(f"commit {commit}; loadavg before {load_before}; after {load_after}")
    if "a" in only and all(results_a[s] for s in SIDES):
        out(f"\n(a) full refresh of {args.entries + 2} entries into an empty standby "
            f"({len(results_a['standin'])} rounds; median)")
        out("| side | per round (s) | median time (s) | median rate (entries/s) |")
        out("| --- | --- | --- | --- |")
        med = {}
        for s in SIDES:
            times = [e for e, _ in results_a[s]]
            med[s] = (median(times), median([r for _, r in results_a[s]]))
            out(f"| {s} | {', '.join(f'{t:.2f}' for t in times)} | {med[s][0]:.2f} | {med[s][1]:.0f} |")
        out(f"ratio standin/slapd (rate): {med['standin'][1] / med['slapd'][1]:.2f}x (target >= 1.0x)")
    if "b" in only and all(results_b[s] for s in SIDES):
        out(f"\n(b) change latency, {args.changes} single modifies per round, master write returned -> "
            f"visible on the standby ({len(results_b['standin'])} rounds; median of the rounds' figures)")
        out("| side | p50 per round (ms) | p99 per round (ms) | median p50 | median p99 | "
            "pooled p50 / p99 / max |")
        out("| --- | --- | --- | --- | --- | --- |")
        med = {}
        for s in SIDES:
            rs = results_b[s]
            pooled = [x for r in rs for x in r["lat"]]
            med[s] = (median([r["p50"] for r in rs]), median([r["p99"] for r in rs]))
            p50s = ", ".join(f"{r['p50']:.2f}" for r in rs)
            p99s = ", ".join(f"{r['p99']:.2f}" for r in rs)
            out(f"| {s} | {p50s} | {p99s} | {med[s][0]:.2f} | {med[s][1]:.2f} | "
                f"{percentile(pooled, 50):.2f} / {percentile(pooled, 99):.2f} / {max(pooled):.2f} |")
        out(f"ratio standin/slapd: p50 {med['standin'][0] / med['slapd'][0]:.2f}x, "
            f"p99 {med['standin'][1] / med['slapd'][1]:.2f}x (target p99 <= 1.0x)")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
