#!/usr/bin/env bash
# Runs the Durable Streams conformance suite (npm @durable-streams/server-conformance-tests)
# against a fresh topics server, and prints the pass/fail counts.
#
#   scripts/ds-conformance.sh            # build, install the suite, run it
#   DS_FILTER="Fork" scripts/ds-conformance.sh   # only tests whose name matches
#   DS_PROFILE=debug scripts/ds-conformance.sh   # the debug build
#   DS_BIN=path/to/topics scripts/ds-conformance.sh  # a given binary (tests/ds_conformance.rs)
#
# The suite's CLI is broken, so it runs through vitest with a three-line test file. It needs
# Node.js and npm (npm registry access on the first run; the install is cached in
# $DS_SUITE_DIR). Exit status: 0 when every test passed.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SUITE_VERSION=${DS_SUITE_VERSION:-0.3.6}
SUITE_DIR=${DS_SUITE_DIR:-$ROOT/target/ds-conformance}
PORT=${DS_PORT:-4437}
LONG_POLL_MS=${DS_LONG_POLL_MS:-500}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

command -v npm >/dev/null || { echo "ds-conformance: npm is not installed" >&2; exit 2; }
if [ -n "${DS_BIN:-}" ]; then
  BIN=$DS_BIN
elif [ "${DS_PROFILE:-release}" = debug ]; then
  cargo build --quiet
  BIN=$TARGET_DIR/debug/topics
else
  cargo build --release --quiet
  BIN=$TARGET_DIR/release/topics
fi

mkdir -p "$SUITE_DIR"
if [ ! -f "$SUITE_DIR/node_modules/@durable-streams/server-conformance-tests/package.json" ] ||
   ! grep -q "\"version\": \"$SUITE_VERSION\"" \
        "$SUITE_DIR/node_modules/@durable-streams/server-conformance-tests/package.json"; then
  (cd "$SUITE_DIR" &&
   { [ -f package.json ] || echo '{"name":"ds-conformance","private":true,"type":"module"}' > package.json; } &&
   npm install --no-audit --no-fund --loglevel=error \
     "@durable-streams/server-conformance-tests@$SUITE_VERSION" vitest@4 >/dev/null)
fi
cat > "$SUITE_DIR/conformance.test.mjs" <<'JS'
import { runConformanceTests } from "@durable-streams/server-conformance-tests"
runConformanceTests({ baseUrl: process.env.DS_URL, longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS) })
JS

DATA=$(mktemp -d)
LOG=$DATA/server.log
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  rm -rf "$DATA"
}
trap cleanup EXIT
"$BIN" --port "$PORT" --data-dir "$DATA/data" --ds-long-poll-ms "$LONG_POLL_MS" \
  --max-topics 0 >"$LOG" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/v0/ready" >/dev/null 2>&1 && break
  sleep 0.1
done

set +e
(cd "$SUITE_DIR" && DS_URL="http://127.0.0.1:$PORT" DS_LONG_POLL_MS="$LONG_POLL_MS" \
  npx vitest run conformance.test.mjs --reporter=verbose ${DS_FILTER:+-t "$DS_FILTER"} \
  >"$DATA/vitest.out" 2>&1)
STATUS=$?
set -e
cp "$DATA/vitest.out" "$SUITE_DIR/last-run.txt"
cp "$LOG" "$SUITE_DIR/server.log"
grep -E "^\s+(×|✗|FAIL)" "$DATA/vitest.out" | sed 's/^ */failed: /' | head -100 || true
grep -E "Tests +[0-9]" "$DATA/vitest.out" || tail -20 "$DATA/vitest.out"
echo "ds-conformance: full output in $SUITE_DIR/last-run.txt"
exit $STATUS
