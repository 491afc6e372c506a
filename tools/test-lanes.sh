#!/usr/bin/env bash
# `make test`'s second phase: the tests that start servers, load eBPF and touch the system, as
# two pytest sessions at once. Most of them wait on processes, sockets and timers rather than on
# the CPU, so two lanes on two cores take about the time of the longer one instead of the sum.
#
#   tools/test-lanes.sh .venv/bin/python
#
# Lane A (the eBPF sensor, the whole-mesh end-to-end tests, the hardening campaign) writes to
# $QSC_TEST_TMP/lane-a.log, shown whole once both lanes are done; lane B (the integration tests)
# prints as it goes. The integration tests that run a fileless payload are in lane A: the
# enforcement tests arm Alpha's in-kernel kill of memfd execs host-wide while they run. Each lane has its own --basetemp below $QSC_TEST_TMP (default
# /tmp/qsc-test); afterwards the secrets scan reads both (tests/campaign/test_secrets.py). The
# exit status is non-zero if any of the three failed.
set -uo pipefail

py=${1:?usage: tools/test-lanes.sh PYTHON}
root=${QSC_TEST_TMP:-/tmp/qsc-test}
fileless=(tests/integration/test_demo.py tests/integration/test_memscan_live.py)
lane_a=(tests/bpf tests/e2e tests/campaign "${fileless[@]}")
lane_b=(tests/integration "${fileless[@]/#/--ignore=}")

rm -rf "$root"
mkdir -p -m 0700 "$root"

echo "lane A (${lane_a[*]}) runs beside this one; its output follows at the end ($root/lane-a.log)"
"$py" -m pytest --basetemp="$root/a" "${lane_a[@]}" >"$root/lane-a.log" 2>&1 &
pid_a=$!
trap 'kill "$pid_a" 2>/dev/null' INT TERM

"$py" -m pytest --basetemp="$root/b" "${lane_b[@]}"
rc_b=$?
wait "$pid_a"
rc_a=$?
trap - INT TERM

echo
echo "== lane A: ${lane_a[*]}"
cat "$root/lane-a.log"

echo
echo "== the secrets scan over both lanes' artefacts"
QSC_SECRETS_SCAN_ROOT="$root" "$py" -m pytest -q --basetemp="$root/scan" \
	"tests/campaign/test_secrets.py::test_no_secret_in_any_artefact_of_this_run"
rc_scan=$?

echo
echo "lane A exit $rc_a, lane B exit $rc_b, secrets scan exit $rc_scan"
[ "$rc_a" -eq 0 ] && [ "$rc_b" -eq 0 ] && [ "$rc_scan" -eq 0 ]
