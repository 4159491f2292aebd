#!/bin/bash
# ./test.sh: install what is missing (Debian 12, as root), build with
# AddressSanitizer and UndefinedBehaviorSanitizer and -Werror, and run every
# test: Check unit tests, integration tests against real PostgreSQL 15,
# slapd 2.5 and Dovecot 2.3 servers, a short libFuzzer run of each parser,
# and make distcheck.  The last line is "N passed, N failed".
#
# Environment: STANDIN_FUZZ_SECONDS (default 20 per target, 0 to skip),
# STANDIN_SKIP_DISTCHECK=1, STANDIN_BUILD_DIR (default ./build).
set -uo pipefail

top=$(cd "$(dirname "$0")" && pwd)
cd "$top" || exit 1
build=${STANDIN_BUILD_DIR:-$top/build}
fuzz_seconds=${STANDIN_FUZZ_SECONDS:-20}
fuzz_targets=(conf cstate order pgoutput ldsync pxadmin manifest ldif imstate)
jobs=$(nproc 2>/dev/null || echo 2)

# shellcheck source=tools/deps.sh
. "$top/tools/deps.sh"

passed=0
failed=0
step_ok() { passed=$((passed + $1)); }
step_fail() { failed=$((failed + $1)); echo "FAILED: $2" >&2; }

# On failure, repeat pytest's short summary (test and first error line) and
# the first assertion lines at the end, where a CI log's tail shows them.
failure_recap() {
	local plog="$build/tests/integration/run-pytest.sh.log"
	[ "$failed" -gt 0 ] && [ -e "$plog" ] || return 0
	grep -qE '^(FAILED|ERROR) ' "$plog" || return 0
	echo "== integration failures (from $plog)"
	grep -E '^(FAILED|ERROR) ' "$plog" | cut -c1-300
	grep -E '^E  ' "$plog" | head -20 | cut -c1-300
}

finish() {
	failure_recap
	echo "$passed passed, $failed failed"
	[ "$failed" -eq 0 ] && exit 0 || exit 1
}

standin_install_missing "$top/.apt.log" || { step_fail 1 "installing packages"; finish; }

echo "== build (sanitizers, -Werror) in $build"
if ! autoreconf -fi >/dev/null 2>&1; then
	autoreconf -fi
	step_fail 1 "autoreconf"
	finish
fi
mkdir -p "$build"
(cd "$build" && "$top/configure" -q --enable-sanitizers --enable-werror) || {
	step_fail 1 "configure"
	finish
}
make -C "$build" -j"$jobs" >/dev/null || { make -C "$build"; step_fail 1 "build"; finish; }

echo "== make check"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
make -C "$build" -j"$jobs" check
check_rc=$?

# Count test cases, not test programs: Check's "Checks: N, Failures: F,
# Errors: E" lines and pytest's summary.
for log in "$build"/tests/unit/*.log; do
	[ -e "$log" ] || continue
	line=$(grep -E '^[0-9]+%: Checks: ' "$log" | tail -1)
	if [ -z "$line" ]; then
		step_fail 1 "$(basename "$log" .log) (no Check summary; crashed?)"
		continue
	fi
	n=$(sed -E 's/.*Checks: ([0-9]+).*/\1/' <<<"$line")
	f=$(sed -E 's/.*Failures: ([0-9]+).*/\1/' <<<"$line")
	e=$(sed -E 's/.*Errors: ([0-9]+).*/\1/' <<<"$line")
	step_ok $((n - f - e))
	[ $((f + e)) -gt 0 ] && step_fail $((f + e)) "$(basename "$log" .log)"
done
plog="$build/tests/integration/run-pytest.sh.log"
if [ -e "$plog" ]; then
	summary=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$plog" | tail -1)
	p=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
	f=$(grep -oE '[0-9]+ failed' <<<"$summary" | grep -oE '[0-9]+' || true)
	e=$(grep -oE '[0-9]+ errors?' <<<"$summary" | grep -oE '[0-9]+' || true)
	step_ok "${p:-0}"
	[ $((${f:-0} + ${e:-0})) -gt 0 ] && step_fail $((${f:-0} + ${e:-0})) "integration tests"
	if [ -z "$summary" ]; then
		step_fail 1 "integration tests (no pytest summary; skipped or crashed)"
	fi
else
	step_fail 1 "integration tests did not run"
fi
if [ $check_rc -ne 0 ]; then
	grep -hE '^(FAIL|ERROR):' "$build/test-suite.log" >&2 || true
	[ "$failed" -eq 0 ] && step_fail 1 "make check (exit $check_rc)"
fi

if [ "$fuzz_seconds" -gt 0 ] && command -v clang >/dev/null; then
	echo "== fuzz (${fuzz_seconds}s per target)"
	fbuild="$build-fuzz"
	mkdir -p "$fbuild"
	if (cd "$fbuild" && "$top/configure" -q CC=clang --enable-fuzzers --enable-werror) &&
		make -C "$fbuild" -j"$jobs" "${fuzz_targets[@]/#/tests/fuzz/fuzz-}" >/dev/null; then
		for t in "${fuzz_targets[@]}"; do
			corpus=$(mktemp -d)
			if "$fbuild/tests/fuzz/fuzz-$t" -max_total_time="$fuzz_seconds" -max_len=4096 \
				"$corpus" "$top/tests/fuzz/corpus/$t" >"$fbuild/fuzz-$t.log" 2>&1; then
				echo "PASS: fuzz-$t ($(grep -oE 'Done [0-9]+ runs' "$fbuild/fuzz-$t.log"))"
				step_ok 1
			else
				tail -40 "$fbuild/fuzz-$t.log" >&2
				step_fail 1 "fuzz-$t"
			fi
			rm -rf "$corpus"
		done
	else
		step_fail 1 "building the fuzzers"
	fi
fi

if [ "${STANDIN_SKIP_DISTCHECK:-0}" != 1 ]; then
	echo "== make distcheck"
	# The tarball's build runs the unit tests and the harness's own tests (the
	# servers start from the tarball's files); the whole integration suite has
	# passed above on this tree, and running it twice doubled CI's time.
	if STANDIN_PYTEST_FILES="test_harness.py test_standinctl.py" \
		make -C "$build" -j"$jobs" distcheck >"$build/distcheck.log" 2>&1; then
		echo "PASS: distcheck"
		step_ok 1
	else
		tail -40 "$build/distcheck.log" >&2
		step_fail 1 "make distcheck"
	fi
fi

finish
