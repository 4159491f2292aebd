#!/usr/bin/python3
"""standinctl dump against plain pg_dump -Fc and slapcat | gzip, side by side.

One PostgreSQL 15 (pgbench -i -s SCALE in database groupware) and one slapd
2.5 (the suffix, ou=people and ENTRIES inetOrgPerson entries, loaded with
slapadd) are started with the test harness.  Each round runs, in an order
that alternates by round:

  pg:   plain   pg_dump -Fc -f FILE groupware
        standin standinctl dump pg --from master, jobs = 1
                (pg_dump -Fc -Z0 | zstd, plus pg_dumpall --globals-only)
        standin standinctl dump pg --from master, jobs = 2
                (pg_dump -Fd -j 2 -Z1, plus globals)
  ldap: plain   slapcat -f slapd.conf | gzip > FILE
        standin standinctl dump ldap --from master (slapcat | zstd)

standinctl's times include what it adds: the lag and position queries, the
fsync of every file, the SHA-256 manifest and the retention pass.  Outputs
are deleted after each measurement.  Prints the median time and the size of
each, the ratios, and /proc/loadavg before and after (the machine is shared).

    bench/dump/run.py --build /tmp/bench-dump-build [--scale 10] [--entries 50000] [--rounds 3]
"""

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))

import standin_harness as sh  # noqa: E402


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().strip()


def size_of(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for d, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def people(n, suffix):
    for i in range(n):
        yield (f"dn: uid=user{i},ou=people,{suffix}\nobjectClass: inetOrgPerson\nuid: user{i}\n"
               f"cn: User Number {i}\nsn: Number{i}\ngivenName: User\n"
               f"mail: user{i}@example.com\ntelephoneNumber: +1 555 {i:07d}\n"
               f"description: benchmark entry {i} of {n}\n\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", required=True, help="build directory with tools/standinctl (no sanitizers)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--entries", type=int, default=50000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    standinctl = os.path.join(os.path.abspath(args.build), "tools", "standinctl")

    print(f"# bench/dump  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}  "
          f"{platform.node()}  {os.cpu_count()} cpus  scale {args.scale}  entries {args.entries}  "
          f"rounds {args.rounds}")
    print(f"# loadavg before: {loadavg()}")
    with sh.Harness("bench-dump") as h:
        pg = h.start_pg("a", fsync=True)
        pg.create_database("groupware")
        sh.run([pg.bin("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", pg.host, "-p", str(pg.port),
                "-U", pg.user, "groupware"], env={"PGPASSFILE": pg.passfile}, timeout=1800)
        pg.psql("VACUUM ANALYZE", db="groupware")
        slapd = sh.SlapdServer(h, "a", "master", load_base=False)
        ldif = h.path("load.ldif")
        with open(ldif, "w") as f:
            f.write(slapd.base_ldif() + "\n")
            for e in people(args.entries, slapd.suffix):
                f.write(e)
        sh.run(["/usr/sbin/slapadd", "-q", "-f", slapd.conf, "-l", ldif], timeout=1800)
        slapd.start()

        base = h.mkdir("standin")
        for n in ("a", "b"):
            os.makedirs(os.path.join(base, n, "state"))
            os.makedirs(os.path.join(base, n, "run"))
        out = h.mkdir("out")

        def conf(jobs):
            text = "[cluster]\nname = bench\n"
            for i, n in enumerate(("a", "b")):
                text += (f"[node {n}]\naddress = 127.0.0.1\nstate_dir = {base}/{n}/state\n"
                         f"run_dir = {base}/{n}/run\n")
            text += (f"[pg]\nendpoint.a = {pg.host}:{pg.port}\nendpoint.b = 127.0.0.1:1\n"
                     f"dbname = groupware\nuser = {pg.user}\npassfile = {pg.passfile}\nsslmode = disable\n"
                     f"[ldap]\nendpoint.a = {slapd.uri.rstrip('/')}\nendpoint.b = ldap://127.0.0.1:1\n"
                     f"suffix = {slapd.suffix}\nbind_dn = {slapd.rootdn}\n"
                     f"password_file = {slapd.password_file}\n"
                     f"[dump]\ndir = {out}/standin-j{jobs}\njobs = {jobs}\npg_databases = groupware\n"
                     f"slapcat_config.a = {slapd.conf}\nkeep = 1\ndaily = 0\nweekly = 0\n")
            path = os.path.join(base, f"standin-j{jobs}.conf")
            with open(path, "w") as f:
                f.write(text)
            return path

        confs = {1: conf(1), 2: conf(2)}
        r = subprocess.run([standinctl, "-c", confs[1], "-n", "a", "state", "init", "--master", "a"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

        def plain_pg():
            f = os.path.join(out, "plain.dump")
            sh.run([pg.bin("pg_dump"), "-Fc", "-f", f, "-h", pg.host, "-p", str(pg.port), "-U", pg.user,
                    "groupware"], env={"PGPASSFILE": pg.passfile}, timeout=3600)
            return f

        def plain_ldap():
            f = os.path.join(out, "plain.ldif.gz")
            with open(f, "wb") as o:
                cat = subprocess.Popen(["/usr/sbin/slapcat", "-f", slapd.conf], stdout=subprocess.PIPE)
                gz = subprocess.Popen(["gzip", "-c"], stdin=cat.stdout, stdout=o)
                cat.stdout.close()
                assert gz.wait() == 0 and cat.wait() == 0
            return f

        def standin(service, jobs):
            def go():
                r = subprocess.run([standinctl, "-c", confs[jobs], "-n", "a", "dump", service,
                                    "--from", "master"], capture_output=True, text=True)
                assert r.returncode == 0 and r.stderr == "", r.stderr
                d = os.path.join(out, f"standin-j{jobs}", service)
                (name,) = [n for n in os.listdir(d) if not n.endswith(".manifest")]
                return os.path.join(d, name)
            return go

        cases = {
            "pg": [("pg_dump -Fc", plain_pg), ("standin jobs=1", standin("pg", 1)),
                   ("standin jobs=2", standin("pg", 2))],
            "ldap": [("slapcat | gzip", plain_ldap), ("standin", standin("ldap", 1))],
        }
        results = {}
        for rnd in range(args.rounds):
            for svc, variants in cases.items():
                order = variants if rnd % 2 == 0 else list(reversed(variants))
                for label, fn in order:
                    t0 = time.monotonic()
                    path = fn()
                    dt = time.monotonic() - t0
                    results.setdefault((svc, label), []).append((dt, size_of(path)))
                    print(f"round {rnd + 1} {svc:4} {label:16} {dt:7.2f} s  {size_of(path):>11} bytes",
                          flush=True)
                    if os.path.isdir(path):
                        shutil.rmtree(path)
                    else:
                        os.unlink(path)
                    if os.path.exists(path + ".manifest"):
                        os.unlink(path + ".manifest")
        print(f"# loadavg after: {loadavg()}")
        print()
        print("| service | what | median time (s) | size (bytes) | time vs plain |")
        print("| --- | --- | --- | --- | --- |")
        for svc, variants in cases.items():
            plain = statistics.median(t for t, _ in results[(svc, variants[0][0])])
            for label, _ in variants:
                ts = [t for t, _ in results[(svc, label)]]
                med = statistics.median(ts)
                size = results[(svc, label)][-1][1]
                print(f"| {svc} | {label} | {med:.2f} | {size} | {med / plain:.2f}x |")


if __name__ == "__main__":
    main()
