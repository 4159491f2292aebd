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
exec "$PY" -m pytest -c "$top_srcdir/tests/pytest.ini" --rootdir="$top_srcdir/tests" \
	-p no:cacheprovider -v -rfEs "$top_srcdir/tests/integration" ${PYTEST_ARGS:-}
