"""What standin-pgrepl says about a standby's health, under the conditions
where it used to say something comforting and false: the lag comes from the
master's clock (a heartbeat) in every state, an error stays an error until
the change that failed is applied, lag_bytes is what is really pending, and
the master's daemon reports its slots.  Status is asserted at every poll,
not only at the end."""
import json
import os
import time

import pytest

import standin_harness as sh
from pgenv import PgEnv
from standin_bin import PGREPL, STANDINCTL, StandinDaemon, query, run

pytestmark = pytest.mark.servers


@pytest.fixture
def pg(harness):
    return PgEnv(harness)


def test_lag_from_the_heartbeat_at_rest_and_under_writes(pg):
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text)")
    pg.start()
    pg.wait_state("streaming")
    st = sh.wait_until(lambda: (s := pg.status())["lag_seconds"] is not None and s, 30,
                       "a first heartbeat applied")
    assert st["lag_seconds"] < 5 and st["heartbeat_ms"] > 0, st
    # A large UPDATE, then VACUUM: at rest the bytes pending are 0, not the
    # WAL the master wrote that carries nothing to replicate.
    pg.sql_a("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100000) g")
    pg.sql_a("UPDATE t SET v = 'y'")
    pg.sql_a("VACUUM t")
    pg.wait_equal("t")
    st = sh.wait_until(lambda: (s := pg.status())["lag_bytes"] == 0 and s, 30,
                       "lag_bytes 0 at rest")
    assert st["lag_seconds"] < 5, st
    confirmed = pg.sql_a("SELECT confirmed_flush_lsn FROM pg_replication_slots "
                         "WHERE slot_name = 'standin_b'")
    assert confirmed != "", confirmed
    # The heartbeat survives a restart: a daemon that was down shows a lag
    # that counts the time it was down until it applies a new one.
    pg.daemon.stop()
    path = os.path.join(pg.base, "b", "state", "pgrepl.heartbeat")
    assert os.path.exists(path)
    saved = int(open(path).read())
    assert abs(saved - st["heartbeat_ms"]) < 15000
    pg.daemon.start()
    st = sh.wait_until(lambda: (s := pg.status())["state"] == "streaming" and
                       s["lag_seconds"] is not None and s["lag_seconds"] < 5 and s, 30,
                       "the lag back under 5 s after the restart")


def _poll(pg, seconds, check):
    """Poll status every 0.5 s for SECONDS; CHECK(status, elapsed) at each."""
    seen = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        st = pg.status()
        check(st, time.monotonic() - t0)
        seen.append(st)
        time.sleep(0.5)
    return seen


def test_conflict_in_a_streamed_transaction_stays_an_error(pg):
    """The case of the issue: a row on the standby collides with a large
    transaction streamed in progress.  At every poll the state is error or
    retrying, never streaming; last_error names the row; lag_seconds keeps
    growing; lag_bytes is known.  A dump from the standby is refused with
    the lag.  Once the row is gone on the standby, the error clears."""
    pg.a.psql("ALTER SYSTEM SET logical_decoding_work_mem = '64kB'")
    pg.a.reload()
    pg.sql_a("CREATE TABLE c4 (id int PRIMARY KEY, v text); CREATE TABLE after (id int)")
    with open(pg.conf, "a") as f:
        f.write("[dump]\ndir = %s\nmax_lag = 3s\n" % pg.h.mkdir("dumps"))
    pg.start()
    pg.wait_state("streaming")
    pg.wait_equal("c4", "after")
    sh.wait_until(lambda: pg.status()["lag_seconds"] is not None, 30, "a first heartbeat")
    pg.sql_b("INSERT INTO c4 VALUES (40000, 'standby only')")
    t_conflict = time.time()
    pg.sql_a("INSERT INTO c4 SELECT g, repeat('y', 150) FROM generate_series(1, 50000) g")
    pg.sql_a("INSERT INTO after VALUES (1)")
    sh.wait_until(lambda: pg.status()["state"] == "error", 60, "the conflict")

    states = set()

    def check(st, _elapsed):
        states.add(st["state"])
        assert st["state"] in ("error", "retrying"), st
        assert st["last_error"] is not None and "c4" in st["last_error"], st
        assert "40000" in st["last_error"], st
        assert st["lag_seconds"] is not None, st
        # The master's heartbeats before the conflict are all it has applied.
        assert st["lag_seconds"] >= time.time() - t_conflict - 2, (st, time.time() - t_conflict)
        assert st["lag_bytes"] is not None and st["lag_bytes"] > 0, st
    seen = _poll(pg, 25, check)
    assert "error" in states and "retrying" in states, states
    lags = [s["lag_seconds"] for s in seen]
    assert lags[-1] > lags[0] + 15, lags
    assert pg.sql_b("SELECT count(*) FROM after") == "0"

    r = run(STANDINCTL, "-c", pg.conf, "-n", "b", "dump", "pg", "--from", "standby")
    assert r.returncode != 0, r.stdout
    assert "lags" in r.stderr and "more than max_lag 3.0 s" in r.stderr, r.stderr

    # The administrator removes the standby's row: the stream goes through.
    pg.sql_b("DELETE FROM c4 WHERE id = 40000")
    st = sh.wait_until(lambda: (s := pg.status())["state"] == "streaming" and s, 120,
                       "streaming again once the row is gone")
    assert st["last_error"] is None, st
    pg.wait_equal("c4", "after")
    st = sh.wait_until(lambda: (s := pg.status())["lag_seconds"] < 5 and s, 30, "lag back down")
    assert "applied past the error" in pg.daemon.output()


def test_master_reports_its_slots(pg):
    """A standby left down: the master's daemon says its slot is inactive and
    how much WAL it holds; standinctl status warns."""
    with open(pg.conf, "a") as f:
        f.write("slot_warn_mb = 1\n")
    pg.sql_a("CREATE TABLE t (id int PRIMARY KEY, v text)")
    d_b = pg.start()
    d_a = StandinDaemon(PGREPL, pg.conf, "a", os.path.join(pg.base, "a", "run"),
                        os.path.join(pg.base, "pgrepl-a.log"))
    pg.h.add_cleanup(d_a.stop)
    pg.wait_state("streaming")
    st = sh.wait_until(lambda: (s := d_a.status())["slots"] and s, 30, "a's slots")
    assert st["state"] == "idle (master)" and st["lag_seconds"] is None, st
    assert [x["slot"] for x in st["slots"]] == ["standin_b"] and st["slots"][0]["active"], st
    d_b.stop()
    pg.sql_a("INSERT INTO t SELECT g, repeat('z', 200) FROM generate_series(1, 30000) g")
    pg.a.psql("CHECKPOINT")
    st = sh.wait_until(lambda: (s := d_a.status())["slots"] and not s["slots"][0]["active"] and
                       s["slots"][0]["retained_bytes"] > 2 * 1024 * 1024 and s, 40,
                       "the slot inactive, holding WAL")
    assert st["slots"][0]["wal_status"] in ("reserved", "extended"), st
    r = run(STANDINCTL, "-c", pg.conf, "-n", "a", "status")
    assert "warning: node a: replication slot standin_b holds" in r.stdout, r.stdout
    assert "more than [pg] slot_warn_mb 1; no standby streams from it" in r.stdout, r.stdout
    r = run(STANDINCTL, "-c", pg.conf, "-n", "a", "status", "--json")
    warnings = json.loads(r.stdout)["warnings"]
    assert any("standin_b" in w for w in warnings), warnings
    metrics = query(d_a.sock, "metrics")
    assert 'standin_pg_slot_active{node="a",slot="standin_b"} 0' in metrics, metrics
