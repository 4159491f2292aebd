#!/usr/bin/python3
"""What standin-pgrepl's status and standinctl dump say about a standby
stuck on a conflict inside a large streamed transaction, over two minutes.

The case of the lag-and-health issue: a PostgreSQL 15 pair from the test
harness, standin-pgrepl of --build on the standby, logical_decoding_work_mem
at 64kB on the master so the transaction is streamed in progress.  A row
with id 400000 is put on the standby, then the master runs
INSERT INTO c4 SELECT g, repeat('y', 150) FROM generate_series(1, ROWS) g
and one more transaction after it.  Status is read every 0.5 s for
--seconds (120), one line a second printed; every 10 s
`standinctl dump pg --from standby` runs with [dump] max_lag = 1m and its
outcome is printed.  At the end the row is removed on the standby and the
time until the standby streams again, with no error, is printed.

    bench/pg/stuck_conflict.py --build /tmp/b [--rows 500000] [--seconds 120]
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", required=True, help="standin build directory")
    ap.add_argument("--rows", type=int, default=500000)
    ap.add_argument("--seconds", type=int, default=120)
    args = ap.parse_args()
    os.environ["STANDIN_BUILDDIR"] = os.path.abspath(args.build)
    os.environ["STANDIN_SRCDIR"] = ROOT
    sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    import standin_harness as sh
    from pgenv import PgEnv
    from standin_bin import STANDINCTL, run

    h = sh.Harness("stuck_conflict")
    try:
        pg = PgEnv(h)
        pg.a.psql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
        pg.a.reload()
        pg.sql_a("CREATE TABLE c4 (id int PRIMARY KEY, v text); CREATE TABLE after (id int)")
        with open(pg.conf, "a") as f:
            f.write("[dump]\ndir = %s\nmax_lag = 1m\n" % h.mkdir("dumps"))
        pg.start()
        pg.wait_state("streaming")
        sh.wait_until(lambda: pg.status()["lag_seconds"] is not None, 30, "a first heartbeat")
        pg.sql_b("INSERT INTO c4 VALUES (400000, 'standby only')")
        print(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: INSERT of {args.rows} rows into c4 "
              "on the master; the standby holds id 400000", flush=True)
        t0 = time.monotonic()
        pg.sql_a(f"INSERT INTO c4 SELECT g, repeat('y', 150) FROM generate_series(1, {args.rows}) g")
        pg.sql_a("INSERT INTO after VALUES (1)")
        print("#   t  state      lag_seconds   lag_bytes  spooled_bytes  last_error", flush=True)
        states, next_print, next_dump = {}, 0.0, 10.0
        while (t := time.monotonic() - t0) < args.seconds:
            st = pg.status()
            states[st["state"]] = states.get(st["state"], 0) + 1
            if t >= next_print:
                err = (st["last_error"] or "-")[:70]
                lag = st["lag_seconds"]
                print(f"{t:5.1f}  {st['state']:<10} {lag if lag is None else round(lag, 1)!s:>11} "
                      f"{st['lag_bytes']!s:>11} {st['spooled_bytes']:>14}  {err}", flush=True)
                next_print += 1.0
            if t >= next_dump:
                r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "dump", "pg", "--from", "standby")
                why = (r.stderr.strip().splitlines() or ["-"])[-1][:110]
                print(f"{t:5.1f}  dump pg --from standby: exit {r.returncode}: {why}", flush=True)
                next_dump += 10.0
            time.sleep(0.5)
        print(f"# polls by state: {json.dumps(states)}", flush=True)
        pg.sql_b("DELETE FROM c4 WHERE id = 400000")
        t1 = time.monotonic()
        st = sh.wait_until(lambda: (s := pg.status())["state"] == "streaming" and s, 300,
                           "streaming again")
        print(f"# row removed on the standby: streaming again after {time.monotonic() - t1:.1f} s, "
              f"last_error {st['last_error']}, lag_seconds {st['lag_seconds']:.1f}", flush=True)
        pg.wait_equal("c4", "after", timeout=300)
        print(f"# equal; lag_seconds {pg.status()['lag_seconds']:.1f}", flush=True)
    finally:
        h.close(failed=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
