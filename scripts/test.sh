#!/usr/bin/env bash
# Builds (kernels + TypeScript), runs the ava suite with TAP output, and ends
# with the line CI reads: "N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
npm run --silent build || { echo "0 passed, 1 failed"; exit 1; }
tap=$(mktemp)
npx ava --tap "$@" 2>&1 | tee "$tap"
status=${PIPESTATUS[0]}
count() { grep -E "^# $1 [0-9]+" "$tap" | tail -1 | awk '{print $3}'; }
pass=$(count pass); fail=$(count fail); skip=$(count skip)
rm -f "$tap"
echo "${pass:-0} passed, ${fail:-0} failed, ${skip:-0} skipped"
if [ "$status" -ne 0 ] && [ "${fail:-0}" = "0" ]; then echo "ava exited with $status"; fi
exit "$status"
