"""What the side-by-side benchmarks under bench/ share: timestamped output,
small statistics, and the preamble that says what was measured on what
(machine, versions, commit, binaries, CFLAGS, command line)."""

import datetime
import os
import shlex
import statistics
import subprocess
import sys
import time

T_START = time.monotonic()


class BenchError(Exception):
    pass


def log(msg):
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)


def out(msg=""):
    print(msg, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cmd_out(argv, **kw):
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, **kw)
        return (r.stdout or r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"({e})"


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def median(xs):
    return statistics.median(xs)


def preamble(title, root, build, programs, program_path, versions, make=True):
    """Print TITLE, the date, the command line, the machine, VERSIONS (a
    line), the tree's commit (and what is uncommitted under replicators/ or
    lib/), then run make for PROGRAMS in BUILD (unless MAKE is false) and
    print each binary's build time (PROGRAM_PATH(prog) -> path) and the
    build's CFLAGS.  Returns the commit."""
    out(title)
    out(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    out(f"command: {' '.join(shlex.quote(a) for a in [sys.executable] + sys.argv)}")
    out(f"host: nproc {os.cpu_count()}, {cmd_out(['uname', '-sr'])}")
    out("free -g:\n" + cmd_out(["free", "-g"]))
    out(versions)
    commit = cmd_out(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    dirty = cmd_out(["git", "-C", root, "status", "--short", "--", "replicators", "lib"])
    out(f"commit: {commit}" + (f" (uncommitted changes under replicators/ or lib/:\n{dirty})" if dirty else
                                " (no uncommitted changes under replicators/ or lib/)"))
    if make:
        r = subprocess.run(["make", "-C", build, "-j2", *programs], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"make in {build} failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    for prog in programs:
        path = program_path(prog)
        built = datetime.datetime.fromtimestamp(os.path.getmtime(path)).isoformat(timespec="seconds")
        out(f"binary: {path} built {built}")
    cflags = [line for line in open(os.path.join(build, "Makefile")) if line.startswith("CFLAGS =")]
    out(f"build CFLAGS: {cflags[0].split('=', 1)[1].strip() if cflags else '?'}")
    return commit
