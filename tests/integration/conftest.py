"""pytest fixtures for the integration tests.

Puts tests/lib (the server harness) and this directory (standin_bin) on
sys.path, and wraps standin_harness.Harness in fixtures:

* harness: one Harness per test, closed after it; its directory is kept
  (and its path printed) when the test failed.
* cluster: the six servers of a two-node cluster (PostgreSQL, slapd and
  Dovecot on nodes a and b), started for the test and always stopped.

Tests that need servers skip, with the reason, when not run as root or when
a server package is missing; a broken server is a failure, not a skip.
"""
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)

import standin_harness  # noqa: E402


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Remember each phase's outcome on the item, so fixtures know whether
    the test failed (and keep its directory)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def _failed(request):
    return any(getattr(request.node, f"rep_{w}", None) is not None and
               getattr(request.node, f"rep_{w}").failed for w in ("setup", "call"))


@pytest.fixture
def harness(request):
    reason = standin_harness.missing_servers()
    if reason:
        pytest.skip(reason)
    h = standin_harness.Harness(request.node.name)
    try:
        yield h
    finally:
        h.close(failed=_failed(request))


@pytest.fixture
def cluster(harness):
    return standin_harness.start_pairs(harness)
