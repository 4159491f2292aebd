"""Paths to this build's programs and helpers to run them (shared by tests)."""
import os
import subprocess

BUILDDIR = os.environ.get("STANDIN_BUILDDIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build")
SRCDIR = os.environ.get("STANDIN_SRCDIR") or os.path.join(os.path.dirname(__file__), "..", "..")


def program(name):
    """Absolute path of a built program, e.g. program('tools/standinctl')."""
    path = os.path.abspath(os.path.join(BUILDDIR, name))
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not built (run make check, or set STANDIN_BUILDDIR)")
    return path


STANDINCTL = "tools/standinctl"
TESTD = "tests/lib/standin-testd"


def run(prog, *args, env=None, timeout=30):
    """Run a program to completion; return the CompletedProcess (text)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([program(prog), *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def write_cluster_conf(tmp, extra="", nodes=("a", "b")):
    """A small valid cluster file under TMP with each node's dirs inside TMP."""
    text = "[cluster]\nname = itest\n"
    for i, n in enumerate(nodes):
        text += (f"[node {n}]\naddress = 127.0.0.{i + 1}\n"
                 f"state_dir = {tmp}/{n}/state\nrun_dir = {tmp}/{n}/run\n")
    text += "[pg]\n"
    for i, n in enumerate(nodes):
        text += f"endpoint.{n} = 127.0.0.{i + 1}:5432\n"
    text += "dbname = groupware\nuser = standin\n" + extra
    path = os.path.join(tmp, "standin.conf")
    with open(path, "w") as f:
        f.write(text)
    return path
