"""The systemd units of contrib/systemd/: their sandboxing, measured with
`systemd-analyze security --offline=true` against a ceiling per unit, and
the files checked with `systemd-analyze verify`.  No servers, no running
systemd: both commands read the unit files only.

Exposure scores measured with systemd 252 (Debian 12), 0 safest, 10 worst;
before the hardening every unit scored 8.7 (the proxy 8.8, the dump unit 9.2):

    standin-pgrepl.service     1.4
    standin-ldaprepl.service   1.4
    standin-imaprepl.service   1.4
    standin-proxy.service      1.5  (CAP_NET_BIND_SERVICE for ports below 1024)
    standin-failoverd.service  1.7  (kick_command may be any program)
    standin-dump@.service      1.2  (also in a user namespace of its own)

What each unit still allows and why is in the comment at its top.
"""
import os
import re
import shutil
import subprocess

import pytest

from standin_bin import SRCDIR, program

UNIT_DIR = os.path.join(SRCDIR, "contrib", "systemd")

# Unit file -> highest exposure accepted (the score measured: any loosening fails).
CEILINGS = {
    "standin-pgrepl.service": 1.4,
    "standin-ldaprepl.service": 1.4,
    "standin-imaprepl.service": 1.4,
    "standin-proxy.service": 1.5,
    "standin-failoverd.service": 1.7,
    "standin-dump@.service": 1.2,
}

# The checks each unit still fails (a line "\u2717 NAME ..." of the report), and
# why.  The score moves in steps of 0.1 and hides a lost setting of weight
# 0.1, so the findings are compared too: one more is a failure.
EVERY_UNIT = {
    "RootDirectory=/RootImage=",                # the host's /usr: pg_dump, slapcat, libraries
    "RestrictAddressFamilies=~AF_UNIX",          # admin socket, journal, sd_notify
    "RestrictAddressFamilies=~AF_(INET|INET6)",  # the servers, etcd, the proxy's clients
    "PrivateNetwork=",                           # idem
    "IPAddressDeny=",                            # the servers' addresses are in standin.conf
    "DeviceAllow=",                              # char-rtc:r, which ProtectClock=yes adds
    "SystemCallFilter=~@privileged",             # chown: the admin socket to admin_group (zstd)
}
FINDINGS = {
    # PrivateUsers: chown to an admin_group outside the user namespace fails.
    # ProtectHome=tmpfs, not yes: libpq (~/.postgresql/postgresql.crt).
    "standin-pgrepl.service": {"PrivateUsers=", "ProtectHome="},
    "standin-ldaprepl.service": {"PrivateUsers="},
    "standin-imaprepl.service": {"PrivateUsers="},
    # The capability must hold in the host's network namespace: no PrivateUsers.
    "standin-proxy.service": {"PrivateUsers=", "AmbientCapabilities=",
                              "CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"},
    # kick_command may be any program, and may be given CAP_KILL (host processes).
    "standin-failoverd.service": {"PrivateUsers=", "ProtectHome=", "MemoryDenyWriteExecute=",
                                  "ProtectProc=", "ProcSubset=", "SystemCallFilter=~@resources"},
    "standin-dump@.service": {"ProtectHome="},
}

# /usr/sbin/NAME in the units -> this build's program.
PROGRAMS = {
    "standinctl": "tools/standinctl",
    "standin-pgrepl": "replicators/pg/standin-pgrepl",
    "standin-ldaprepl": "replicators/ldap/standin-ldaprepl",
    "standin-imaprepl": "replicators/imap/standin-imaprepl",
    "standin-proxy": "proxy/standin-proxy",
    "standin-failoverd": "failover/standin-failoverd",
}

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None,
                                reason="systemd-analyze is not installed (apt-get install systemd)")

ENV = dict(os.environ, SYSTEMD_COLORS="0", SYSTEMD_PAGER="", SYSTEMD_LOG_COLOR="0")


def analyze(*args, env=ENV):
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=120, env=env)


def unit_settings(name):
    """KEY -> [values] of the [Service] section of a unit file."""
    settings, section = {}, None
    with open(os.path.join(UNIT_DIR, name)) as f:
        for line in f:
            line = line.strip()
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                section = line
                continue
            if section == "[Service]":
                key, _, value = line.partition("=")
                settings.setdefault(key, []).append(value)
    return settings


def test_every_unit_has_a_ceiling():
    units = sorted(f for f in os.listdir(UNIT_DIR) if f.endswith(".service"))
    assert units == sorted(CEILINGS) == sorted(FINDINGS)


@pytest.mark.parametrize("unit", sorted(CEILINGS))
def test_exposure(unit):
    r = analyze("security", "--offline=true", "--no-pager", os.path.join(UNIT_DIR, unit))
    assert r.returncode == 0, r.stderr
    # A misspelt or unknown setting is only warned about, and would count as unset.
    assert r.stderr.strip() == "", r.stderr
    m = re.search(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)", r.stdout)
    assert m, r.stdout[-2000:]
    score = float(m.group(2))
    print(f"{unit}: {score} {m.group(3)}")
    failed = [line for line in r.stdout.splitlines() if line.startswith("\u2717")]
    assert score <= CEILINGS[unit], (
        f"{unit}: exposure {score} is above its ceiling {CEILINGS[unit]}:\n" + "\n".join(failed))
    names = {line.split()[1] for line in failed}
    assert names - EVERY_UNIT - FINDINGS[unit] == set(), "\n".join(failed)


@pytest.mark.parametrize("unit", sorted(CEILINGS))
def test_sandbox_settings(unit):
    """What the scores do not tell apart: a read-only system, no way to gain
    privileges, and only the proxy holding a capability."""
    s = unit_settings(unit)
    assert s["User"] == ["standin"] and s["UMask"] == ["0077"]
    assert s["ProtectSystem"] == ["strict"] and s["ProtectHome"] in (["yes"], ["tmpfs"])
    assert s["NoNewPrivileges"] == ["yes"] and s["PrivateDevices"] == ["yes"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert s["SystemCallErrorNumber"] == ["EPERM"]
    caps = "CAP_NET_BIND_SERVICE" if unit == "standin-proxy.service" else ""
    assert s["CapabilityBoundingSet"] == [caps]
    assert s.get("AmbientCapabilities", [""]) == [caps]


def test_verify(tmp_path):
    """systemd-analyze verify: the units parse without a warning, their
    commands are this build's programs, the man pages they name exist."""
    units = tmp_path / "units"
    units.mkdir()
    for name in os.listdir(UNIT_DIR):
        with open(os.path.join(UNIT_DIR, name)) as f:
            text = f.read()
        text = re.sub(r"/usr/sbin/([\w-]+)", lambda m: program(PROGRAMS[m.group(1)]), text)
        (units / name).write_text(text)
    # Documentation=man:...: the pages of this tree, through MANPATH.
    man = tmp_path / "man"
    for sec in ("5", "8"):
        (man / f"man{sec}").mkdir(parents=True)
    mandir = os.path.join(SRCDIR, "man")
    for page in os.listdir(mandir):
        sec = page.rsplit(".", 1)[-1]
        if sec in ("5", "8"):
            os.symlink(os.path.join(mandir, page), man / f"man{sec}" / page)
    man_check = "--man=yes" if shutil.which("man") else "--man=no"
    names = sorted(CEILINGS) + ["standin-dump@.timer"]
    paths = [str(units / n.replace("@.", "@all.")) for n in names]
    r = analyze("verify", man_check, *paths, env=dict(ENV, MANPATH=str(man)))
    assert r.returncode == 0 and r.stderr.strip() == "" and r.stdout.strip() == "", \
        r.stdout + r.stderr
