#!/usr/bin/python3
"""standin-imaprepl against mbsync (isync), side by side.

One source Dovecot (a) holding one user's mail in three folders, and two
targets: Dovecot b written by standin-imaprepl (--build) and Dovecot c
written by mbsync (`mbsync -a`, Channel with Patterns *, Create Near,
Sync Pull, Expunge Near, CopyArrivalDate yes).  All three from the test
harness (tests/lib/standin_harness.py), each logged into as
USER*standin (the Dovecot master user).  Only the side being measured works:
standin-imaprepl is stopped while mbsync runs, except in (b) where it
stays running, idle; the side going first alternates by round.

  (a) initial sync of N messages (~2 KB, some \\Seen/\\Flagged/\\Answered,
      some with keywords) into an empty target: from the start of the
      replicator (standin-imaprepl with no state, or `mbsync -a` with no
      sync state) until its first pass ends / mbsync exits -> messages/s
  (b) incremental pass after CHANGES new messages and CHANGES flag changes
      in the two folders other than INBOX (standin-imaprepl running and
      caught up, IDLE on INBOX only, notify = no): the `pass` admin command until that
      pass ends, against another `mbsync -a`
  (b') the same after a stop: changes in all three folders while
      standin-imaprepl is stopped, then its start until its first pass
      ends, against `mbsync -a`
  (c) new-message latency: single APPENDs to INBOX on the source, from the
      APPEND returning to the message being in the target's INBOX (polled
      with NOOP on a connection of its own); standin-imaprepl by IDLE,
      mbsync (no push) run right after each APPEND

After every measurement both targets are compared with the source, folder by
folder: message count, a hash of the bodies, flags, keywords, INTERNALDATE.
See README.md next to this file for the exact criteria.
"""

import argparse
import datetime
import hashlib
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.dont_write_bytecode = True   # no __pycache__ in tests/ (other people's directories)
sys.path.insert(0, os.path.join(ROOT, "tests", "lib"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, os.path.dirname(HERE))
from benchlib import BenchError, cmd_out, loadavg, log, median, out, percentile, preamble  # noqa: E402

SIDES = ("standin", "mbsync")
PROGRAMS = ("replicators/imap/standin-imaprepl", "tools/standinctl")
MBSYNC = "/usr/bin/mbsync"
USER = "bench"
FOLDERS = ("INBOX", "Archive", "Lists")
SHARES = (0.40, 0.35, 0.25)        # of the messages, per folder
SYSTEM_FLAGS = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"}
POLL = 0.005                       # seconds between status polls in timed waits
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu meeting "
         "report budget invoice schedule release review draft customer server backup").split()









def src_tgt(rows):
    return ", ".join(f"{r['src_cpu']:.2f} / {r['tgt_cpu']:.2f}" for r in rows)


def fmt_list(values, digits):
    return ", ".join(f"{v:.{digits}f}" for v in values)


def cpu_seconds(pid):
    """utime + stime of a live process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    return text.rsplit(")", 1)[1].split()


def server_cpu(server):
    """CPU seconds of a Dovecot server so far: its master process, the
    children it has reaped (imap, imap-login, auth...) and its children not
    reaped yet, zombies included (a zombie's time is in neither the live
    processes nor the master's cutime).  Retried if the master reaped a child
    while the children were read."""
    pid = server.pid
    tick = os.sysconf("SC_CLK_TCK")
    for _ in range(10):
        m = _stat_fields(pid)
        total = sum(int(x) for x in m[11:15])      # utime stime cutime cstime
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == pid:
                continue
            try:
                f = _stat_fields(name)
            except OSError:
                continue
            if int(f[1]) == pid:                     # ppid
                total += int(f[11]) + int(f[12])
        if _stat_fields(pid)[13:15] == m[13:15]:
            return total / tick
    return total / tick


def q(name):
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def message(tag, i, rnd):
    """About 2 KB: headers, then text lines of words (deterministic per tag/i)."""
    words = [WORDS[rnd.randrange(len(WORDS))] for _ in range(rnd.randint(230, 330))]
    lines, line = [], []
    for w in words:
        line.append(w)
        if sum(len(x) + 1 for x in line) > 66:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    body = "\r\n".join(lines)
    head = (f"From: Sender {i % 97} <sender{i % 97}@example.com>\r\nTo: {USER}@example.com\r\n"
            f"Subject: {tag} message {i}: {' '.join(words[:5])}\r\n"
            f"Message-ID: <{tag}.{i}.{rnd.getrandbits(32):08x}@bench.example.com>\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n")
    return (head + "\r\n" + body + "\r\n").encode()


def flags_for(i):
    fl = []
    if i % 3:
        fl.append("\\Seen")
    if i % 17 == 0:
        fl.append("\\Flagged")
    if i % 11 == 0:
        fl.append("\\Answered")
    if i % 13 == 0:
        fl.append("$Label1")
    if i % 29 == 0:
        fl.append("$Work")
    return fl


def idate(i):
    """INTERNALDATE for APPEND: spread over about a month."""
    t = datetime.datetime(2026, 10, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=4 * i)
    return '"' + t.strftime("%d-%b-%Y %H:%M:%S +0000") + '"'


# -- reading a server ----------------------------------------------------------

TUID = re.compile(rb"\r\nX-TUID: [^\r\n]*")


def read_content(server, user=USER, strip_tuid=False):
    """{folder: sorted [(sha256(body), system flags, keywords, internaldate)]}.
    strip_tuid: remove the X-TUID header mbsync adds to every message it
    copies (counted in read_content.tuids) before hashing."""
    res = {}
    read_content.tuids = 0
    with server.imap(user, master=True, timeout=300) as c:
        typ, data = c.list()
        names = []
        for item in data:
            if isinstance(item, tuple):
                names.append(item[1].decode())
                continue
            m = re.match(rb'\(([^)]*)\) (?:"[^"]*"|NIL) (.*)$', item or b"")
            if not m or b"\\Noselect" in m.group(1):
                continue
            name = m.group(2)
            if name.startswith(b'"'):
                name = name[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
            names.append(name.decode())
        for name in names:
            typ, data = c.select(q(name), readonly=True)
            if typ != "OK":
                raise BenchError(f"EXAMINE {name} on {server.name}: {data}")
            msgs = []
            if int(data[0]) > 0:
                typ, data = c.uid("FETCH", "1:*", "(FLAGS INTERNALDATE BODY.PEEK[])")
                for k, item in enumerate(data):
                    if not isinstance(item, tuple):
                        continue
                    meta = item[0]
                    if k + 1 < len(data) and isinstance(data[k + 1], bytes):
                        meta += data[k + 1]
                    fl = re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split()
                    date = re.search(rb'INTERNALDATE "([^"]*)"', meta).group(1).decode()
                    sysf = tuple(sorted(f for f in fl if f in SYSTEM_FLAGS))
                    kw = tuple(sorted(f for f in fl if not f.startswith("\\")))
                    body = item[1]
                    if strip_tuid:
                        head, sep, rest = body.partition(b"\r\n\r\n")
                        head, k = TUID.subn(b"", head, 1)
                        read_content.tuids += k
                        body = head + sep + rest
                    msgs.append((hashlib.sha256(body).hexdigest(), sysf, kw, date))
            res[name] = sorted(msgs)
    return res


def summarize(content):
    """(messages, sha256 over the sorted body hashes of every folder)."""
    h = hashlib.sha256()
    n = 0
    for f in sorted(content):
        h.update(f.encode() + b"\0")
        for m in content[f]:
            h.update(m[0].encode())
            n += 1
    return n, h.hexdigest()[:16]


def compare(src, tgt):
    """Differences by kind: count, body, flags (system), keywords, date."""
    probs = {k: [] for k in ("folders", "count", "body", "flags", "keywords", "date")}
    if sorted(src) != sorted(tgt):
        probs["folders"].append(f"source {sorted(src)}, target {sorted(tgt)}")
    for f, ms in src.items():
        mt = tgt.get(f, [])
        if len(ms) != len(mt):
            probs["count"].append(f"{f}: source {len(ms)}, target {len(mt)}")
        if sorted(m[0] for m in ms) != sorted(m[0] for m in mt):
            probs["body"].append(f"{f}: bodies differ")
            continue
        # same bodies: compare the rest per body (bodies are unique here)
        bt = {m[0]: m for m in mt}
        for kind, idx in (("flags", 1), ("keywords", 2), ("date", 3)):
            bad = [m for m in ms if bt[m[0]][idx] != m[idx]]
            if bad:
                probs[kind].append(f"{f}: {len(bad)} messages, e.g. source {bad[0][idx]} target "
                                   f"{bt[bad[0][0]][idx]}")
    return {k: v for k, v in probs.items() if v}


# -- the latency watcher -------------------------------------------------------

class Watcher(threading.Thread):
    """One connection to a target: EXAMINE INBOX, NOOP every POLL seconds;
    when EXISTS grows, FETCH the new messages' Message-IDs and note when each
    was first seen (the time the NOOP's answer arrived)."""

    def __init__(self, server, poll):
        super().__init__(daemon=True)
        self.c = server.imap(USER, master=True, timeout=60)
        typ, data = self.c.select("INBOX", readonly=True)
        self.exists = int(data[0])
        self.poll = poll
        self.seen = {}
        self.stop_flag = threading.Event()
        self.error = None
        self.noops = 0

    def run(self):
        try:
            while not self.stop_flag.is_set():
                self.c.noop()
                t = time.monotonic()
                self.noops += 1
                typ, data = self.c.response("EXISTS")
                if data and data[-1] is not None:
                    n = int(data[-1])
                    if n > self.exists:
                        typ, fd = self.c.fetch(f"{self.exists + 1}:{n}",
                                               "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                        for item in fd:
                            if isinstance(item, tuple):
                                m = re.search(rb"<([^>]+)>", item[1])
                                if m:
                                    self.seen.setdefault(m.group(1).decode(), t)
                    self.exists = n
                self.c.response("FETCH")
                self.c.response("RECENT")
                if self.poll > 0:
                    time.sleep(self.poll)
        except Exception as e:  # noqa: BLE001 - reported by the caller
            self.error = e

    def finish(self):
        self.stop_flag.set()
        self.join(10)
        try:
            self.c.logout()
        except Exception:  # noqa: BLE001
            pass


class IdleProbe(threading.Thread):
    """A client in IDLE on the source's INBOX (raw socket): notes when each
    `* N EXISTS` arrives, to measure how long Dovecot takes to tell an IDLE
    client about a new message (what standin-imaprepl waits for)."""

    def __init__(self, server):
        super().__init__(daemon=True)
        import socket
        self.s = socket.create_connection((server.host, server.port), timeout=60)
        self.f = self.s.makefile("rb")
        self.f.readline()
        login = server.login_name(USER, master=True)
        for tag, cmd in ((b"a", f'LOGIN "{login}" "{server.master_password}"'.encode()),
                         (b"b", b"EXAMINE INBOX")):
            self.s.sendall(tag + b" " + cmd + b"\r\n")
            while True:
                line = self.f.readline()
                m = re.match(rb"\* (\d+) EXISTS", line)
                if m:
                    self.exists = int(m.group(1))
                if line.startswith(tag + b" "):
                    if not line.startswith(tag + b" OK"):
                        raise BenchError(f"IDLE probe: {line!r}")
                    break
        self.base = self.exists
        self.s.sendall(b"c IDLE\r\n")
        if not self.f.readline().startswith(b"+"):
            raise BenchError("IDLE probe: no continuation")
        self.times = []          # (time, exists)
        self.error = None

    def run(self):
        try:
            while True:
                line = self.f.readline()
                if not line:
                    return
                m = re.match(rb"\* (\d+) EXISTS", line)
                if m:
                    self.times.append((time.monotonic(), int(m.group(1))))
                if line.startswith(b"c "):
                    return
        except Exception as e:  # noqa: BLE001
            self.error = e

    def seen_at(self, k):
        """When the K-th new message was first announced."""
        for t, n in self.times:
            if n >= self.base + k:
                return t
        return None

    def finish(self):
        try:
            self.s.sendall(b"DONE\r\n")
        except OSError:
            pass
        self.join(10)
        self.s.close()


# -- the benchmark -------------------------------------------------------------

class Bench:
    def __init__(self, args):
        self.args = args
        self.h = sh.Harness("bench-imap")
        self.pw = "pw-" + os.urandom(8).hex()
        users = {USER: "bench-secret"}
        self.a = self.h.start_dovecot("a", users=users, master_password=self.pw)
        self.b = self.h.start_dovecot("b", users=users, master_password=self.pw)
        self.c = self.h.start_dovecot("c", users=users, master_password=self.pw)
        self.base = self.h.mkdir("standin")
        self.users_file = os.path.join(self.base, "users")
        with open(self.users_file, "w") as f:
            f.write(f"{USER}\n")
        self.conf = self.write_conf()
        self.imaprepl_log = os.path.join(self.base, "imaprepl-b.log")
        self.daemon = None
        self.errors = []
        self.mbsync_dir = self.h.mkdir("mbsync")
        self.mbsync_state = os.path.join(self.mbsync_dir, "state")
        self.mbsync_conf = self.write_mbsync_conf()
        self.mbsync_stderr = []
        self.seq = 0                 # messages generated so far (unique numbers)

    # -- configuration ---------------------------------------------------------

    def write_conf(self, notify=False):
        text = "[cluster]\nname = benchimap\n"
        if self.args.debug_log:
            text += "log_level = debug\n"
        for s in (self.a, self.b):
            text += (f"[node {s.node}]\naddress = {s.host}\n"
                     f"state_dir = {self.base}/{s.node}/state\nrun_dir = {self.base}/{s.node}/run\n")
        text += "[imap]\n"
        for s in (self.a, self.b):
            text += f"endpoint.{s.node} = imap://{s.host}:{s.port}\n"
        text += (f"admin_user = {self.a.master_user}\npassword_file = {self.a.master_password_file}\n"
                 f"users_file = {self.users_file}\n"
                 # no timed passes during the run: passes are started by the benchmark
                 f"full_pass_interval = 24h\n")
        if self.args.workers:
            text += f"workers = {self.args.workers}\n"
        # (a) and (b) without NOTIFY: (b) measures the pass, which push would
        # otherwise have done before it starts; (c) with it (the default).
        text += f"notify = {'yes' if notify else 'no'}\n"
        path = os.path.join(self.base, "standin.conf")
        with open(path, "w") as f:
            f.write(text)
        return path

    def write_mbsync_conf(self):
        text = ""
        for name, s in (("far", self.a), ("near", self.c)):
            text += (f"IMAPStore {name}\nHost {s.host}\nPort {s.port}\n"
                     f"User {s.login_name(USER, master=True)}\n"
                     f"PassCmd \"cat {s.master_password_file}\"\nSSLType None\nAuthMechs LOGIN\n\n")
        text += ("Channel bench\nFar :far:\nNear :near:\nPatterns *\nCreate Near\nSync Pull\n"
                 f"Expunge Near\nSyncState {self.mbsync_state}/\nCopyArrivalDate yes\n")
        path = os.path.join(self.mbsync_dir, "mbsyncrc")
        with open(path, "w") as f:
            f.write(text)
        return path

    # -- source ----------------------------------------------------------------

    def new_messages(self, count, tag):
        """[(folder index, bytes, flags, date)] for COUNT new messages."""
        res = []
        for k in range(count):
            i = self.seq
            self.seq += 1
            res.append((i, message(tag, i, random.Random(i)), flags_for(i), idate(i)))
        return res

    def load_source(self):
        n = self.args.messages
        counts = [int(n * s) for s in SHARES]
        counts[0] += n - sum(counts)
        msgs = self.new_messages(n, "init")
        t = time.monotonic()
        with self.a.imap(USER, master=True, timeout=120) as c:
            for f in FOLDERS[1:]:
                c.create(q(f))
            k = 0
            for fi, cnt in enumerate(counts):
                for _ in range(cnt):
                    i, body, fl, date = msgs[k]
                    k += 1
                    typ, data = c.append(q(FOLDERS[fi]), "(" + " ".join(fl) + ")" if fl else None,
                                         date, body)
                    if typ != "OK":
                        raise BenchError(f"APPEND on the source: {data}")
        size = sum(len(m[1]) for m in msgs)
        log(f"source: {n} messages ({', '.join(f'{f} {c}' for f, c in zip(FOLDERS, counts))}), "
            f"{size} bytes (mean {size // n}), APPENDed in {time.monotonic() - t:.1f}s")

    def append_some(self, count, folders, tag):
        """COUNT new messages spread over FOLDERS, on one connection."""
        msgs = self.new_messages(count, tag)
        with self.a.imap(USER, master=True, timeout=60) as c:
            for k, (i, body, fl, date) in enumerate(msgs):
                f = folders[k % len(folders)]
                typ, data = c.append(q(f), "(" + " ".join(fl) + ")" if fl else None, date, body)
                if typ != "OK":
                    raise BenchError(f"APPEND on the source: {data}")

    def change_flags(self, count, folders, seed):
        """COUNT flag changes spread over FOLDERS: \\Flagged added to messages
        without it and removed from messages with it (so each is a change),
        on distinct messages chosen at random."""
        rnd = random.Random(seed)
        done = 0
        with self.a.imap(USER, master=True, timeout=60) as c:
            for k, f in enumerate(folders):
                want = count // len(folders) + (1 if k < count % len(folders) else 0)
                c.select(q(f))
                typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
                flags = {}
                for item in data:
                    u = re.search(rb"UID (\d+)", item or b"")
                    fl = re.search(rb"FLAGS \(([^)]*)\)", item or b"")
                    if u and fl:
                        flags[int(u.group(1))] = fl.group(1).decode().split()
                for uid in rnd.sample(sorted(flags), want):
                    op = "-FLAGS.SILENT" if "\\Flagged" in flags[uid] else "+FLAGS.SILENT"
                    typ, data = c.uid("STORE", str(uid), op, "(\\Flagged)")
                    if typ != "OK":
                        raise BenchError(f"STORE on the source: {data}")
                    done += 1
        return done

    # -- verification ----------------------------------------------------------

    def verify(self, sides, what, src=None):
        """Compare the targets of SIDES with the source; raise on a difference
        the side claims to handle.  Returns the source content."""
        if src is None:
            src = read_content(self.a)
        n, digest = summarize(src)
        for side in sides:
            tgt = read_content(self.target(side), strip_tuid=side == "mbsync")
            tuids = read_content.tuids
            tn, tdigest = summarize(tgt)
            probs = compare(src, tgt)
            fatal = {k: v for k, v in probs.items()
                     if side == "standin" or k in ("folders", "count", "body", "flags")}
            info = {k: v for k, v in probs.items() if k not in fatal}
            line = (f"verify after {what}, {side}: source {n} messages, bodies {digest}; target {tn}, "
                    f"bodies {tdigest}" + (f" (with the X-TUID header mbsync added removed from {tuids})"
                                           if side == "mbsync" else ""))
            if not probs:
                log(line + ": equal (count, bodies, flags, keywords, INTERNALDATE)")
            elif not fatal:
                log(line + ": equal (count, bodies, flags); NOT copied: " +
                    "; ".join(f"{k}: {v[0]}" for k, v in info.items()))
            else:
                log(line + ": DIFFERENT")
                for k, v in probs.items():
                    log(f"  {k}: {v[:3]}")
                raise BenchError(f"{side}'s target differs from the source after {what}")
        return src

    def target(self, side):
        return self.b if side == "standin" else self.c

    # -- standin ---------------------------------------------------------------

    def standin_reset(self):
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
            self.daemon = sb.StandinDaemon(IMAPREPL, self.conf, "b", os.path.join(self.base, "b", "run"),
                                           self.imaprepl_log)
            self.h.add_cleanup(self.daemon.stop)
        else:
            self.daemon.start()

    def standin_stop(self):
        if self.daemon is not None and self.daemon.running():
            self.daemon.stop()

    def standin_running(self):
        return self.daemon is not None and self.daemon.running()

    def status(self):
        """The daemon's status (None while its socket is not up yet)."""
        if not self.daemon.running():
            raise sh.StopWaiting(f"standin-imaprepl exited {self.daemon.proc.returncode}:\n"
                                 f"{self.daemon.output()[-3000:]}")
        try:
            st = self.daemon.status()
        except (OSError, ValueError):
            return None
        if st.get("last_error") and st["last_error"] not in [e[1] for e in self.errors]:
            self.errors.append((st.get("state"), st["last_error"]))
            log(f"standin-imaprepl last_error: {st['last_error']}")
        return st

    def wait_pass_end(self, passes_before, t0, timeout):
        """Poll the status until a pass numbered > PASSES_BEFORE has ended."""
        while True:
            st = self.status()
            if st is not None and st["passes"] > passes_before and not st["pass_active"]:
                return time.monotonic(), st
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"standin-imaprepl: no pass ended within {timeout}s: {st}")
            time.sleep(POLL)

    def standin_caught_up(self, timeout=600):
        """Running, a first pass done, nothing queued or running."""
        if not self.standin_running():
            self.standin_start()
        t0 = time.monotonic()
        while True:
            st = self.status()
            if (st is not None and st["passes"] >= 1 and not st["pass_active"] and st["jobs_queued"] == 0
                    and st["jobs_running"] == 0 and st["idling"] >= 1):
                return st
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"standin-imaprepl not caught up after {timeout}s: {st}")
            time.sleep(0.05)

    def standin_drain(self, timeout=120):
        """Ask `drain NOW` until it says yes (a clean pass started after now ended)."""
        t = int(time.time() * 1000)
        t0 = time.monotonic()
        while True:
            self.status()
            r = json.loads(sb.query(self.daemon.sock, f"drain {t}"))
            if r.get("drained"):
                return
            if time.monotonic() - t0 > timeout:
                raise BenchError(f"standin-imaprepl not drained after {timeout}s: {r}")
            time.sleep(0.05)

    # -- mbsync ----------------------------------------------------------------

    def mbsync(self):
        """Run `mbsync -a`; (wall seconds, CPU seconds)."""
        errfile = os.path.join(self.mbsync_dir, "stderr")
        with open(errfile, "wb") as ef:
            t0 = time.monotonic()
            p = subprocess.Popen([MBSYNC, "-q", "-c", self.mbsync_conf, "-a"], stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=ef)
            _, status, ru = os.wait4(p.pid, 0)
            t1 = time.monotonic()
        p.returncode = os.waitstatus_to_exitcode(status)
        with open(errfile, errors="replace") as ef:
            err = ef.read().strip()
        if err and err not in self.mbsync_stderr:
            self.mbsync_stderr.append(err)
        if p.returncode != 0:
            raise BenchError(f"mbsync exited {p.returncode}: {err}")
        return t1 - t0, ru.ru_utime + ru.ru_stime

    # -- wiping a target -------------------------------------------------------

    def wipe(self, server):
        """Remove the user's mail on SERVER, then sync(2) and let the disk
        settle (--settle seconds) so the deletion is not timed with the sync."""
        home = server.home(USER)
        shutil.rmtree(home)
        server.add_user_home(USER)
        os.sync()
        time.sleep(self.args.settle)

    # -- (a) initial sync -------------------------------------------------------

    def dovecot_cpu(self, side):
        return server_cpu(self.a), server_cpu(self.target(side))

    def initial(self, side, rnd):
        n = self.args.messages
        if side == "standin":
            self.standin_stop()
            self.wipe(self.b)
            self.standin_reset()
            log(f"(a) round {rnd} standin: loadavg {loadavg()}; starting standin-imaprepl, no state, "
                f"empty target")
            dc0 = self.dovecot_cpu(side)
            t0 = time.monotonic()
            self.standin_start()
            t1, st = self.wait_pass_end(0, t0, self.args.timeout)
            cpu = cpu_seconds(self.daemon.proc.pid)
            extra = (f"; status: state {st['state']}, appended {st['appended']}, folders "
                     f"{st['folders']}, flag_updates {st['flag_updates']}, last_error {st['last_error']}")
            if st["appended"] != n:
                raise BenchError(f"standin-imaprepl appended {st['appended']}, expected {n}")
        else:
            self.standin_stop()
            self.wipe(self.c)
            shutil.rmtree(self.mbsync_state, ignore_errors=True)
            os.makedirs(self.mbsync_state)
            log(f"(a) round {rnd} mbsync: loadavg {loadavg()}; mbsync -a, no sync state, empty target")
            dc0 = self.dovecot_cpu(side)
            t0 = time.monotonic()
            wall, cpu = self.mbsync()
            t1 = t0 + wall
            extra = ""
        elapsed = t1 - t0
        rate = n / elapsed
        dc = [x - y for x, y in zip(self.dovecot_cpu(side), dc0)]
        log(f"(a) round {rnd} {side}: {n} messages in {elapsed:.2f}s = {rate:.0f} messages/s, "
            f"CPU {cpu:.2f}s (Dovecot source {dc[0]:.2f}s, target {dc[1]:.2f}s){extra}; loadavg {loadavg()}")
        if side == "standin":
            self.standin_stop()          # not running while mbsync works
        self.verify([side], f"(a) round {rnd}", self.src0)
        return dict(time=elapsed, rate=rate, cpu=cpu, src_cpu=dc[0], tgt_cpu=dc[1])

    # -- (b) incremental pass ---------------------------------------------------

    def incremental(self, rnd, order, cold):
        tag = "b'" if cold else "b"
        folders = list(FOLDERS) if cold else list(FOLDERS[1:])
        if cold:
            self.standin_stop()
        else:
            self.standin_caught_up()
        ch = self.args.changes
        self.append_some(ch, folders, f"{'bc' if cold else 'b'}{rnd}")
        done = self.change_flags(ch, folders, seed=1000 * rnd + (7 if cold else 0))
        log(f"({tag}) round {rnd}: {ch} new messages and {done} flag changes in {', '.join(folders)} "
            f"on the source" + (" (standin-imaprepl stopped)" if cold else
                                " (standin-imaprepl running, idle)"))
        res = {}
        for side in order:
            dc0 = self.dovecot_cpu(side)
            if side == "standin":
                if cold:
                    log(f"({tag}) round {rnd} standin: loadavg {loadavg()}; starting standin-imaprepl")
                    t0 = time.monotonic()
                    self.standin_start()
                    t1, st = self.wait_pass_end(0, t0, self.args.timeout)
                    base = (0, 0)
                else:
                    st0 = self.status()
                    if st0["pass_active"] or st0["jobs_queued"] or st0["jobs_running"]:
                        raise BenchError(f"standin-imaprepl not idle before the pass: {st0}")
                    base = (st0["appended"], st0["flag_updates"])
                    log(f"({tag}) round {rnd} standin: loadavg {loadavg()}; admin command pass")
                    cpu0 = cpu_seconds(self.daemon.proc.pid)
                    t0 = time.monotonic()
                    r = json.loads(sb.query(self.daemon.sock, "pass"))
                    if not r.get("pass_active"):
                        raise BenchError(f"pass: {r}")
                    t1, st = self.wait_pass_end(st0["passes"], t0, self.args.timeout)
                cpu = cpu_seconds(self.daemon.proc.pid) - (0 if cold else cpu0)
                app, fl = st["appended"] - base[0], st["flag_updates"] - base[1]
                extra = f"; appended {app}, flag_updates {fl}, last_error {st['last_error']}"
                if cold:
                    self.standin_stop()
            else:
                log(f"({tag}) round {rnd} mbsync: loadavg {loadavg()}; mbsync -a")
                t0 = time.monotonic()
                wall, cpu = self.mbsync()
                t1 = t0 + wall
                extra = ""
            dc = [x - y for x, y in zip(self.dovecot_cpu(side), dc0)]
            res[side] = dict(time=t1 - t0, cpu=cpu, src_cpu=dc[0], tgt_cpu=dc[1])
            log(f"({tag}) round {rnd} {side}: {t1 - t0:.3f}s, CPU {cpu:.2f}s (Dovecot source {dc[0]:.2f}s, "
                f"target {dc[1]:.2f}s){extra}; loadavg {loadavg()}")
        self.verify(order, f"({tag}) round {rnd}")
        return res

    # -- (c) latency ------------------------------------------------------------

    def idle_probe(self):
        """How long the source's Dovecot takes to announce a new message to a
        client in IDLE: the same APPEND pattern as (c), standin-imaprepl stopped."""
        self.standin_stop()
        count = self.args.latency_count
        p = IdleProbe(self.a)
        p.start()
        msgs = self.new_messages(count, "idleprobe")
        rets = []
        with self.a.imap(USER, master=True, timeout=60) as c:
            t_next = time.monotonic()
            for (i, body, fl, date) in msgs:
                now = time.monotonic()
                if now < t_next:
                    time.sleep(t_next - now)
                typ, data = c.append("INBOX", None, None, body)
                rets.append(time.monotonic())
                t_next = rets[-1] + self.args.gap_ms / 1000.0
        deadline = time.monotonic() + 10
        while p.seen_at(count) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        p.finish()
        if p.error is not None or p.seen_at(count) is None:
            raise BenchError(f"IDLE probe: {p.error!r}, {len(p.times)} notifications")
        lat = [(p.seen_at(k + 1) - t) * 1000.0 for k, t in enumerate(rets)]
        res = dict(p50=percentile(lat, 50), p99=percentile(lat, 99), max=max(lat), min=min(lat),
                   notes=len(p.times))
        log(f"(c) Dovecot IDLE notification on the source, {count} APPENDs {self.args.gap_ms:g} ms apart: "
            f"APPEND returned -> `* EXISTS` to a client in IDLE: p50 {res['p50']:.1f} ms, p99 "
            f"{res['p99']:.1f} ms, min {res['min']:.1f}, max {res['max']:.1f} ms ({res['notes']} "
            f"notifications)")
        return res

    def latency(self, side, rnd):
        if side == "standin":
            self.standin_caught_up()
            count = self.args.latency_count
        else:
            self.standin_stop()
            self.mbsync()                       # catch up (not counted)
            count = self.args.mbsync_latency_count
        w = Watcher(self.target(side), self.args.poll_ms / 1000.0)
        w.start()
        tag = f"lat-{side}-{rnd}"
        msgs = self.new_messages(count, tag)
        ids = [re.search(rb"Message-ID: <([^>]+)>", m[1]).group(1).decode() for m in msgs]
        rets, runs = [], []
        cpu0 = cpu_seconds(self.daemon.proc.pid) if side == "standin" else 0.0
        mb_cpu = 0.0
        log(f"({'c'}) round {rnd} {side}: loadavg {loadavg()}; {count} APPENDs to INBOX, "
            f"{self.args.gap_ms} ms apart" + (", mbsync -a after each" if side == "mbsync" else ""))
        with self.a.imap(USER, master=True, timeout=60) as c:
            t_next = time.monotonic()
            for k, (i, body, fl, date) in enumerate(msgs):
                now = time.monotonic()
                if now < t_next:
                    time.sleep(t_next - now)
                typ, data = c.append("INBOX", None, None, body)
                t_ret = time.monotonic()
                if typ != "OK":
                    raise BenchError(f"APPEND: {data}")
                rets.append(t_ret)
                if side == "mbsync":
                    wall, cpu = self.mbsync()
                    runs.append(wall)
                    mb_cpu += cpu
                    t_next = time.monotonic() + self.args.gap_ms / 1000.0
                else:
                    t_next = t_ret + self.args.gap_ms / 1000.0
                    if k % 50 == 49:
                        self.status()
        deadline = time.monotonic() + 60
        while len(w.seen) < count and time.monotonic() < deadline and w.error is None and w.is_alive():
            time.sleep(0.01)
        w.finish()
        if w.error is not None:
            raise BenchError(f"watcher on {self.target(side).name}: {w.error!r}")
        missing = [x for x in ids if x not in w.seen]
        if missing:
            raise BenchError(f"{side}: {len(missing)} of {count} messages not on the target after 60 s, "
                             f"e.g. {missing[:3]}")
        lat = [(w.seen[x] - t) * 1000.0 for x, t in zip(ids, rets)]
        res = dict(p50=percentile(lat, 50), p99=percentile(lat, 99), mean=statistics.fmean(lat),
                   max=max(lat), min=min(lat), lat=lat, noops=w.noops)
        extra = ""
        if side == "standin":
            res["cpu"] = cpu_seconds(self.daemon.proc.pid) - cpu0
            st = self.status()
            extra = f"; CPU {res['cpu']:.2f}s; status: passes {st['passes']}, idling {st['idling']}"
            self.standin_drain()
        else:
            res["run_p50"] = percentile([r * 1000 for r in runs], 50)
            res["run_p99"] = percentile([r * 1000 for r in runs], 99)
            res["cpu"] = mb_cpu
            extra = (f"; mbsync run p50 {res['run_p50']:.1f} ms, p99 {res['run_p99']:.1f} ms, "
                     f"CPU {mb_cpu:.2f}s in all")
        log(f"(c) round {rnd} {side}: latency p50 {res['p50']:.1f} ms, p99 {res['p99']:.1f} ms, "
            f"mean {res['mean']:.1f}, min {res['min']:.1f}, max {res['max']:.1f} ms ({w.noops} NOOPs){extra}; "
            f"loadavg {loadavg()}")
        self.verify([side], f"(c) round {rnd}")
        return res


def main():
    global sh, sb, IMAPREPL
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--build", default="/tmp/bench-imap-build",
                   help="configured build directory (CFLAGS=-O2 -g, no sanitizers)")
    p.add_argument("--no-make", action="store_true", help="do not run make in --build first")
    p.add_argument("--only", default="a,b,c", help="what to report: a, b, c (b and c need one (a) round)")
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--changes", type=int, default=100, help="(b): new messages, and flag changes")
    p.add_argument("--latency-count", type=int, default=200, help="(c): APPENDs per standin round")
    p.add_argument("--mbsync-latency-count", type=int, default=200, help="(c): APPENDs per mbsync round")
    p.add_argument("--gap-ms", type=float, default=50, help="(c): between APPENDs")
    p.add_argument("--poll-ms", type=float, default=2, help="(c): the target is polled (NOOP) every POLL_MS")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--first", choices=SIDES, default="standin", help="who goes first in odd rounds")
    p.add_argument("--workers", type=int, default=0, help="[imap] workers (0: the default)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per sync")
    p.add_argument("--settle", type=float, default=3, help="(a): seconds of rest after wiping a target")
    p.add_argument("--debug-log", action="store_true", help="standin-imaprepl logs at level debug (job times)")
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
    IMAPREPL = PROGRAMS[0]

    commit = preamble("bench/imap: standin-imaprepl against mbsync", ROOT, build, PROGRAMS, sb.program,
             f"dovecot: {cmd_out([sh.DOVECOT, '--version'])}; mbsync: {cmd_out([MBSYNC, '--version'])}",
             make=not args.no_make)
    out(f"options: messages {args.messages}, changes {args.changes}, latency {args.latency_count} "
        f"(mbsync {args.mbsync_latency_count}) APPENDs {args.gap_ms:g} ms apart, poll {args.poll_ms:g} ms, "
        f"rounds {args.rounds}, first {args.first}, workers {args.workers or 'default'}")
    load_before = loadavg()
    out(f"loadavg before: {load_before}")
    out()

    bench = None
    failed = True
    ra = {s: [] for s in SIDES}
    rb = {s: [] for s in SIDES}
    rb2 = {s: [] for s in SIDES}
    rc = {s: [] for s in SIDES}
    probe = None
    try:
        bench = Bench(args)
        out("mbsync configuration:\n" + "\n".join(("  " + line).rstrip()
                                                   for line in open(bench.mbsync_conf).read().strip().splitlines()))
        out("standin.conf [imap]:\n  " + open(bench.conf).read().split("[imap]\n", 1)[1].strip()
            .replace("\n", "\n  "))
        bench.load_source()
        bench.src0 = read_content(bench.a)
        n0, d0 = summarize(bench.src0)
        log(f"source: {n0} messages, bodies {d0}")
        order0 = list(SIDES) if args.first == "standin" else list(reversed(SIDES))

        def order(rnd):
            return order0 if rnd % 2 == 1 else list(reversed(order0))
        rounds_a = args.rounds if "a" in only else 1
        for rnd in range(1, rounds_a + 1):
            for side in order(rnd):
                ra[side].append(bench.initial(side, rnd))
        if "b" in only:
            for rnd in range(1, args.rounds + 1):
                r = bench.incremental(rnd, order(rnd), cold=False)
                for s in SIDES:
                    rb[s].append(r[s])
            for rnd in range(1, args.rounds + 1):
                r = bench.incremental(rnd, order(rnd), cold=True)
                for s in SIDES:
                    rb2[s].append(r[s])
        if "c" in only:
            bench.standin_stop()
            bench.write_conf(notify=True)
            log("(c) with [imap] notify = yes (the default), standin-imaprepl restarted")
            probe = bench.idle_probe()
            for rnd in range(1, args.rounds + 1):
                for side in order(rnd):
                    rc[side].append(bench.latency(side, rnd))
        failed = False
    except Exception as e:  # noqa: BLE001 - reported, then the servers are stopped
        log(f"FAILED: {e!r}")
        if not isinstance(e, (BenchError, sh.HarnessError)):
            import traceback
            traceback.print_exc(file=sys.stdout)
    finally:
        if bench is not None:
            if os.path.exists(bench.imaprepl_log):
                with open(bench.imaprepl_log, errors="replace") as f:
                    lines = f.read().splitlines()
                bad = [l for l in lines if re.search(r"\] (warn\w*|err\w*|crit\w*|fatal|alert|emerg)\b", l)
                       or "conflict" in l.lower()]
                out(f"\nstandin-imaprepl log: {len(lines)} lines, {len(bad)} at level warning or worse "
                    f"or naming a conflict")
                for l in bad[:20]:
                    out("  " + l)
            if bench.errors:
                out("standin-imaprepl last_error values seen in its status:")
                for state, e in bench.errors:
                    out(f"  ({state}) {e}")
            if bench.mbsync_stderr:
                out("mbsync stderr (distinct):")
                for e in bench.mbsync_stderr[:10]:
                    out("  " + e.replace("\n", "\n  "))
            try:
                bench.h.close(failed=failed)
            except sh.HarnessError as e:
                out(f"harness: {e}")
    load_after = loadavg()

    out("\nSUMMARY")
    out(f"commit {commit}; loadavg before {load_before}; after {load_after}")
    if "a" in only and all(ra[s] for s in SIDES):
        out(f"\n(a) initial sync of {args.messages} messages in {len(FOLDERS)} folders into an empty target "
            f"({len(ra['standin'])} rounds)")
        out("| side | per round (s) | median time (s) | median rate (messages/s) | CPU per round (s) | "
            "Dovecot CPU source / target (s) |")
        out("| --- | --- | --- | --- | --- | --- |")
        med = {}
        for s in SIDES:
            times = [r["time"] for r in ra[s]]
            med[s] = median([r["rate"] for r in ra[s]])
            out(f"| {s} | {', '.join(f'{t:.2f}' for t in times)} | {median(times):.2f} | {med[s]:.0f} | "
                f"{fmt_list([r['cpu'] for r in ra[s]], 2)} | {src_tgt(ra[s])} |")
        per = ", ".join(f"{x['rate'] / y['rate']:.2f}x" for x, y in zip(ra["standin"], ra["mbsync"]))
        out(f"ratio standin/mbsync (median rate): {med['standin'] / med['mbsync']:.2f}x; per round {per} "
            f"(target >= 2x)")
    for key, res, what in (("b", rb, f"(b) incremental pass after {args.changes} new messages and "
                            f"{args.changes} flag changes in Archive and Lists (standin: admin command "
                            "`pass`, running and idle)"),
                           ("b", rb2, "(b') the same in all three folders while standin-imaprepl was "
                            "stopped (standin: start until its first pass ends)")):
        if key in only and all(res[s] for s in SIDES):
            out(f"\n{what}")
            out("| side | per round (s) | median (s) | CPU per round (s) | Dovecot CPU source / target (s) |")
            out("| --- | --- | --- | --- | --- |")
            med = {}
            for s in SIDES:
                times = [r["time"] for r in res[s]]
                med[s] = median(times)
                out(f"| {s} | {', '.join(f'{t:.3f}' for t in times)} | {med[s]:.3f} | "
                    f"{fmt_list([r['cpu'] for r in res[s]], 2)} | {src_tgt(res[s])} |")
            per = ", ".join(f"{y['time'] / x['time']:.2f}x" for x, y in zip(res["standin"], res["mbsync"]))
            out(f"ratio mbsync time / standin time (speed-up): {med['mbsync'] / med['standin']:.2f}x; per "
                f"round {per} " + ("(target >= 2x)" if res is rb else "(not a target: the cost of a restart)"))
    if "c" in only and all(rc[s] for s in SIDES):
        out(f"\n(c) new-message latency, APPEND returned on the source -> in the target's INBOX "
            f"(NOOP poll every {args.poll_ms:g} ms); ms")
        out("| side | APPENDs per round | p50 per round | p99 per round | pooled p50 / p99 / max |")
        out("| --- | --- | --- | --- | --- |")
        for s in SIDES:
            rs = rc[s]
            pooled = [x for r in rs for x in r["lat"]]
            out(f"| {s} | {len(rs[0]['lat'])} | {fmt_list([r['p50'] for r in rs], 1)} | "
                f"{fmt_list([r['p99'] for r in rs], 1)} | {percentile(pooled, 50):.1f} / "
                f"{percentile(pooled, 99):.1f} / {max(pooled):.1f} |")
        if probe:
            out(f"| (Dovecot IDLE notification alone, source) | {args.latency_count} | {probe['p50']:.1f} | "
                f"{probe['p99']:.1f} | max {probe['max']:.1f} |")
        out("standin-imaprepl is pushed by IDLE on the source INBOX; mbsync has no push mode: its "
            "figures are for a run of `mbsync -a` started right after each APPEND returned (a lower "
            "bound for any polling schedule, which adds on average half its interval).")
        p99 = percentile([x for r in rc["standin"] for x in r["lat"]], 99)
        out(f"target: standin p99 < 1000 ms: {p99:.1f} ms, {'met' if p99 < 1000 else 'NOT met'}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
