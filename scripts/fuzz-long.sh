#!/usr/bin/env bash
# The long hostile-input run: the Hypothesis fuzz tests of tests/hardening with the
# "hardening-long" profile (20,000 random, non-derandomized examples per test instead of CI's
# 60 fixed ones), plus the --runslow campaigns (40 kill -9 rounds). Loopback only; bounded by
# the example counts. Extra pytest arguments pass through, e.g. -k scep or -x.
#   scripts/fuzz-long.sh                 # everything, roughly an hour
#   ENROLL_FUZZ_EXAMPLES=2000 scripts/fuzz-long.sh -k parse_gates
set -euo pipefail
cd "$(dirname "$0")/.."
export ENROLL_FUZZ_PROFILE=hardening-long
exec .venv/bin/python -m pytest tests/hardening --runslow -p no:cacheprovider -q "$@"
