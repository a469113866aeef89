#!/usr/bin/env bash
# Cargo's test runner in CI (`.ci/run` passes it as `target.'cfg(unix)'.runner`): runs one test
# executable (one tests/*.rs file, or a crate's unit tests) under a time limit, so that a
# deadlock fails the run naming the executable instead of hanging CI. GNU timeout signals the
# whole process group, so the servers a hung test started go too.
# COFFER_TEST_BINARY_TIMEOUT: seconds per executable (default 1200; the slowest takes ~3 min).
limit="${COFFER_TEST_BINARY_TIMEOUT:-1200}"
timeout --kill-after=30 "$limit" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "TIMEOUT: $1 still running after ${limit} s: a hung test (failing the run)" >&2
fi
exit "$rc"
