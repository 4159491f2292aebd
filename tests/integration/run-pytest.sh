#!/bin/sh
# Run the integration tests (pytest, real servers) against this build's
# binaries.  Called by "make check" with top_srcdir and top_builddir set.
# Exit 77 tells automake the suite was skipped (no python3-pytest).
set -u
: "${top_srcdir:?run through make check}" "${top_builddir:?run through make check}"
PY=${PYTHON3:-python3}
[ "$PY" = no ] && PY=python3
if ! "$PY" -c 'import pytest' >/dev/null 2>&1; then
	echo "SKIP: python3-pytest is not installed (apt-get install python3-pytest)"
	exit 77
fi
STANDIN_BUILDDIR=$top_builddir
STANDIN_SRCDIR=$top_srcdir
PYTHONDONTWRITEBYTECODE=1
export STANDIN_BUILDDIR STANDIN_SRCDIR PYTHONDONTWRITEBYTECODE
# STANDIN_PYTEST_FILES: only these files of tests/integration (test.sh's
# distcheck, whose build has just passed the whole suite).
targets="$top_srcdir/tests/integration"
if [ -n "${STANDIN_PYTEST_FILES:-}" ]; then
	targets=
	for f in $STANDIN_PYTEST_FILES; do
		targets="$targets $top_srcdir/tests/integration/$f"
	done
fi
# shellcheck disable=SC2086
exec "$PY" -m pytest -c "$top_srcdir/tests/pytest.ini" --rootdir="$top_srcdir/tests" \
	-p no:cacheprovider -v -rfEs $targets ${PYTEST_ARGS:-}
