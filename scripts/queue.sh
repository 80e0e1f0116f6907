#!/usr/bin/env bash
# The queue measurements of issue 6: claim + ack round trips per second with WORKERS workers,
# and end-to-end job latency at a steady RATE jobs/s. Builds the release binaries, then for
# each queue class (`disk`, `fsync`) runs, each on a fresh server with a fresh data dir pinned
# like round 1 of load.sh (server on CPU 0 with --shards 1, load generator on CPU 1):
#
#   topics-load --workload queue-rt                          claim max 1 -> ack, as fast as it goes,
#                                                            on a big pre-filled backlog
#   topics-load --workload queue-rt --claim-max CLAIM_BATCH  claim K -> ack K in one call
#   the same two with --refill REFILL                        a small backlog kept topped up
#   topics-load --workload queue-latency --rate RATE         producer at RATE, long-polling workers
#
# prints one Markdown report and writes it and the raw JSON to OUT_DIR/queue-latest.{md,json}.
#
#   scripts/queue.sh                   # everything, 10 s per measured run
#   DURATION=3 QUIET_WAIT=5 scripts/queue.sh
#
# Environment: DURATION (10), WARMUP (1), WORKERS (16), RATE (5000), CLAIM_BATCH (16), REFILL (20000),
# WAIT_MS (1000: the latency workers' long poll), PORT (4781), OUT_DIR (perf/results),
# CARGO_TARGET_DIR (target), LOAD_ARGS (extra topics-load flags), QUIET_WAIT (60: seconds to
# wait before each run for other work on the machine to stop), TOPICS_SERVER (a prebuilt
# server binary instead of the workspace's; TOPICS_SERVER_COMMIT names its commit).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
WORKERS=${WORKERS:-16}
RATE=${RATE:-5000}
CLAIM_BATCH=${CLAIM_BATCH:-16}
REFILL=${REFILL:-20000}
WAIT_MS=${WAIT_MS:-1000}
PORT=${PORT:-4781}
OUT_DIR=${OUT_DIR:-$ROOT/perf/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD_ARGS=${LOAD_ARGS:-}
QUIET_WAIT=${QUIET_WAIT:-60}
COMMAND="DURATION=$DURATION WORKERS=$WORKERS RATE=$RATE CLAIM_BATCH=$CLAIM_BATCH REFILL=$REFILL QUIET_WAIT=$QUIET_WAIT${TOPICS_SERVER:+ TOPICS_SERVER=$TOPICS_SERVER}${LOAD_ARGS:+ LOAD_ARGS=\"$LOAD_ARGS\"} scripts/queue.sh${*:+ $*}"

while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "queue.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "queue.sh: $*" >&2; }

need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ "$(nproc)" -lt 2 ]; then
    log "needs 2 CPUs (server on CPU 0, load generator on CPU 1); this machine has $(nproc)"
    exit 1
fi


if [ -n "${TOPICS_SERVER:-}" ]; then
    log "building the load generator (cargo build --release -p perf)"
    (cd "$ROOT" && cargo build --release -p perf --quiet)
else
    log "building release binaries (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace --quiet)
fi
# What the binaries were built from (others may commit or edit while the runs go on).
BUILT_HEAD=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
BUILT_PATHS=(perf/src perf/Cargo.toml Cargo.toml Cargo.lock)
[ -z "${TOPICS_SERVER:-}" ] && BUILT_PATHS+=(src shards)
BUILT_DIRTY=$(git -C "$ROOT" status --porcelain -- "${BUILT_PATHS[@]}" 2>/dev/null | awk '{print $2}' | paste -sd ' ' -)
SERVER=${TOPICS_SERVER:-$TARGET_DIR/release/topics}
LOAD=$TARGET_DIR/release/topics-load
for bin in "$SERVER" "$LOAD"; do
    [ -x "$bin" ] || { log "no executable at $bin"; exit 1; }
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/topics-queue.XXXXXX")
RUNS=$WORK/runs.jsonl
SERVER_LOG=$WORK/server.log
: >"$RUNS"; : >"$SERVER_LOG"
SERVER_PID=""
DATA_DIR=""
SERVER_CMD="taskset -c 0 topics --port $PORT --data-dir <fresh tmp> --shards 1"

cleanup() {
    stop_server || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server: a fresh data dir, the server pinned to CPU 0 with one shard, wait for
# /v0/ready.
start_server() {
    if curl -fs "http://127.0.0.1:$PORT/v0/ready" >/dev/null 2>&1; then
        log "something already answers on port $PORT; set PORT="
        exit 1
    fi
    DATA_DIR=$(mktemp -d "$WORK/data.XXXXXX")
    taskset -c 0 "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" --shards 1 >>"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        if curl -fs "http://127.0.0.1:$PORT/v0/ready" >/dev/null 2>&1; then
            return 0
        fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    log "server did not become ready; its log:"
    tail -n 30 "$SERVER_LOG" >&2
    exit 1
}

stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    if [ -n "$DATA_DIR" ]; then
        rm -rf "$DATA_DIR"
        DATA_DIR=""
    fi
}

# wait_quiet: on a shared machine, wait up to QUIET_WAIT seconds for other work to stop
# (less than 10% of the CPUs busy over a second) before a run; then run anyway.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) busy
    while :; do
        busy=$(cpu_busy_pct)
        if [ "$busy" -le 10 ]; then
            BUSY_AT_START=$busy
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "machine still ${busy}% busy with other work; running anyway"
            BUSY_AT_START=$busy
            return 0
        fi
        log "machine ${busy}% busy with other work; waiting (QUIET_WAIT=$QUIET_WAIT)"
        sleep 2
    done
}

# CPU time in USER_HZ ticks: of the server process (all its threads), and of the whole
# machine (user, nice, system, irq, softirq).
server_ticks() {
    if [ -n "$SERVER_PID" ] && [ -r "/proc/$SERVER_PID/stat" ]; then
        awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$SERVER_PID/stat"
    else
        echo 0
    fi
}

# run CLASS WORKLOAD-ARGS...: one topics-load invocation on a fresh server; its JSON is kept
# with the class, the exact command, the machine's busy share just before, and where the CPU
# went meanwhile (server, load generator, the rest of the machine).
run() {
    local class=$1; shift
    start_server
    # shellcheck disable=SC2206 # LOAD_ARGS is split on purpose
    local cmd=(topics-load --url "http://127.0.0.1:$PORT" "$@" --durability "$class"
        --connections "$WORKERS" --duration-secs "$DURATION" --warmup-secs "$WARMUP" --cpu 1
        $LOAD_ARGS)
    wait_quiet
    log "$class: ${cmd[*]}"
    local out s0 b0 s1 b1
    s0=$(server_ticks); b0=$(busy_ticks)
    if ! out=$("$LOAD" "${cmd[@]:1}" --server-pid "$SERVER_PID" --json); then
        log "topics-load failed; server log tail:"
        tail -n 20 "$SERVER_LOG" >&2
        exit 1
    fi
    s1=$(server_ticks); b1=$(busy_ticks)
    stop_server
    jq -c --arg class "$class" --arg command "${cmd[*]}" --argjson st $((s1 - s0)) \
        --argjson bt $((b1 - b0)) --argjson busy "$BUSY_AT_START" '
        def r2: . * 100 | round / 100;
        . + {class: $class, command: $command, busy_pct_at_start: $busy, cpu: {
            wall_s: .wall_s, load_s: .client_cpu_s, server_s: ($st / 100),
            rest_s: ([($bt - $st) / 100 - (.client_cpu_s // 0), 0] | max | r2)}}
        ' <<<"$out" >>"$RUNS"
    if [ "$(jq -r .workload <<<"$out")" = queue-rt ]; then
        jq -r '.runs[] | "queue.sh:   \(.name): \(.round_trips_per_s) round trips/s, \(.jobs_per_s) jobs/s, claim p50 \(.claim_p50_us) µs, ack p50 \(.ack_p50_us) µs, empty claims \(.empty_claims), errors \(.errors)"' <<<"$out" >&2
    else
        jq -r '.runs[] | "queue.sh:   \(.name): \(.records_per_s) jobs/s, send→claim p50 \(.p50_us) µs p99 \(.p99_us) µs, lost \(.lost), duplicates \(.duplicates), exactly once \(.exactly_once), errors \(.errors)"' <<<"$out" >&2
    fi
}

BUSY_BEFORE=$(cpu_busy_pct)
if [ "$BUSY_BEFORE" -gt 10 ]; then
    log "warning: the machine is ${BUSY_BEFORE}% busy before the run; figures will be skewed"
fi
BUSY_AT_START=$BUSY_BEFORE

for class in disk fsync; do
    run "$class" --workload queue-rt --claim-max 1
    run "$class" --workload queue-rt --claim-max "$CLAIM_BATCH"
    run "$class" --workload queue-rt --claim-max 1 --refill "$REFILL"
    run "$class" --workload queue-rt --claim-max "$CLAIM_BATCH" --refill "$REFILL"
    run "$class" --workload queue-latency --rate "$RATE" --claim-max "$CLAIM_BATCH" --wait-ms "$WAIT_MS"
done

# Machine, commit, and the document.
MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$BUILT_HEAD
if [ -n "$BUILT_DIRTY" ]; then COMMIT="$COMMIT (built with uncommitted changes to $BUILT_DIRTY)"; fi
if [ -n "${TOPICS_SERVER:-}" ]; then
    COMMIT="load generator at $COMMIT; server binary $TOPICS_SERVER (prebuilt${TOPICS_SERVER_COMMIT:+ from commit $TOPICS_SERVER_COMMIT})"
fi
HEAD_NOW=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$HEAD_NOW" != "$BUILT_HEAD" ]; then COMMIT="$COMMIT; HEAD moved to $HEAD_NOW during the runs (not measured)"; fi
# The servers run without API keys on purpose: their start-up warning about it is expected.
PROBLEMS=$(grep -E '(ERROR|WARN|panicked)' "$SERVER_LOG" | grep -vc 'AUTH IS OFF' || true)
FIRST_PROBLEM=$(grep -E '(ERROR|WARN|panicked)' "$SERVER_LOG" | grep -v 'AUTH IS OFF' | head -n 1 || true)

mkdir -p "$OUT_DIR"
jq -s --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg nproc "$(nproc)" --arg model "$MODEL" \
    --arg kernel "$(uname -sr)" --arg commit "$COMMIT" --arg command "$COMMAND" \
    --arg server "$SERVER_CMD" --arg busy "$BUSY_BEFORE" --arg busy_after "$(cpu_busy_pct)" \
    --arg problems "$PROBLEMS" --arg first_problem "$FIRST_PROBLEM" '{
        date: $date,
        machine: {nproc: ($nproc | tonumber), cpu: $model, kernel: $kernel,
                  busy_pct_before: ($busy | tonumber), busy_pct_after: ($busy_after | tonumber)},
        commit: $commit, command: $command, server: $server,
        load: "topics-load --cpu 1 (one executor pinned to CPU 1)",
        settings: {duration_s: '"$DURATION"', warmup_s: '"$WARMUP"', workers: '"$WORKERS"',
                   rate: '"$RATE"', claim_batch: '"$CLAIM_BATCH"', wait_ms: '"$WAIT_MS"',
                   refill: '"$REFILL"'},
        server_log: {problem_lines: ($problems | tonumber), first: $first_problem},
        reports: .
    }' "$RUNS" >"$OUT_DIR/queue-latest.json"

# shellcheck disable=SC2016 # jq variables, not shell ones
TABLE_JQ='
def commas: (floor | tostring | explode | reverse) as $d
    | [range(0; $d | length; 3) as $i | $d[$i:$i + 3] | reverse | implode] | reverse | join(",");
def num: if . == null then "?" else commas end;
def lat: if . == null then "—" elif . < 1000 then "\(.) µs" else "\((. / 10 | round) / 100) ms" end;
def ms: if . == null then "—" elif . < 1 then "\((. * 1000 * 10 | round) / 10) µs" else "\((. * 100 | round) / 100) ms" end;
def kib: if . == null then "?" elif . < 1024 then "\(. | round) B" else "\((. / 1024 * 10 | round) / 10) KiB" end;
def cores: . as $c | ($c.wall_s // 0) as $w | if $w <= 0 then "—" else
    [($c.server_s, $c.load_s, $c.rest_s) | if . == null then "?" else (. / $w * 100 | round / 100 | tostring) end]
    | join(" / ") + (if ($c.rest_s // 0) / $w > 0.1 then " ⚠" else "" end) end;
def errs: if .errors == 0 then "0" else "**\(.errors)**" + (if .first_error then " (`\(.first_error | .[:120])`)" else "" end) end;
def rt_checks: [
    (if .empty_claims > 0 then "**\(.empty_claims) empty claims: pre-fill ran out**" else empty end),
    (if .ack_skipped > 0 then "**\(.ack_skipped) acks skipped**" else empty end),
    (if .redelivered > 0 then "**\(.redelivered) redelivered**" else empty end),
    (if .consistent then "queue counts match" else "**queue counts off**: \(.queue_after | tojson), expected \(.expected_left) left" end)
  ] | join(", ");
def lat_checks($ok): [
    "lost \(.lost), duplicates \(.duplicates), acked once \(.acked_once | num) / \(.jobs_produced | num)",
    (if .queue_after.count == 0 and .queue_after.in_flight == 0 then "queue empty after" else "**queue after: \(.queue_after | tojson)**" end),
    (if .seq_mismatches > 0 or .foreign_jobs > 0 then "**seq mismatches \(.seq_mismatches), foreign \(.foreign_jobs)**" else empty end)
  ] | join(", ") | if $ok then "✅ " + . else "❌ " + . end;
.settings as $s
| "## topics queues (issue 6) — \(.date)",
"",
"- machine: \(.machine.nproc) × \(.machine.cpu), \(.machine.kernel); CPUs \(.machine.busy_pct_before)% busy with other work just before the run, \(.machine.busy_pct_after)% just after; other engineers share this machine, so every figure is noisy (the CPU column shows how much other work ran meanwhile, ⚠ above 0.1 core)",
"- commit: \(.commit)",
"- command: `\(.command)` (each run \($s.duration_s) s after \($s.warmup_s) s warm-up, 256-byte jobs)",
"- server: `\(.server)`, a fresh server and data dir for every run; load: \(.load)",
"- server log: \(.server_log.problem_lines) ERROR/WARN/panic lines (the start-up warning that auth is off not counted)" + (if .server_log.problem_lines > 0 then ", first: `\(.server_log.first)`" else "" end),
"",
"### claim + ack round trips, \($s.workers) workers (each its own `node`), as fast as the server answers",
"",
"Each worker loops `claim {max: K}` → one `ack` of what it got (with the `lease_id`s); a round trip is one claim + ack pair. *Backlog*: either one big pre-fill (enough jobs for the whole run, 256 B each; the server moves a backlog that size from its hot tail to segment files, see *server reads*), or a small backlog kept topped up (`--refill N`: a feeder connection appends 1000 jobs whenever a claim saw fewer than N ready; its appends are part of the server load). *Server reads* is what the server read from storage (`/proc/<pid>/io` `read_bytes`) per job claimed.",
"",
"| queue | K | backlog | round trips/s | jobs/s | claim p50 / p99 | ack p50 / p99 | pair p50 / p99 | server-reported claim / ack p50 | server reads per job | CPU cores: server / load / rest | errors | checks |",
"|---|---|---|---|---|---|---|---|---|---|---|---|---|",
(.reports[] | select(.workload == "queue-rt") as $r | $r.runs[] |
  "| `\($r.class)` | \($r.params.claim_max) | " + (if $r.params.refill_below then "kept ≥ \($r.params.refill_below | num) ready (\(.refilled_jobs | num) jobs refilled)" else "\($r.params.prefilled | num) pre-filled" end) + " | **\(.round_trips_per_s | num)** | \(.jobs_per_s | num) | \(.claim_p50_us | lat) / \(.claim_p99_us | lat) | \(.ack_p50_us | lat) / \(.ack_p99_us | lat) | \(.p50_us | lat) / \(.p99_us | lat) | \(.claim_server_total_ms_p50 | ms) / \(.ack_server_total_ms_p50 | ms)" + (if (.ack_fsync_ms_p50 // 0) > 0 then " (fsync \(.ack_fsync_ms_p50 | ms))" else "" end) + " | \(.server_read_bytes_per_job | kib) (\((.server_read_bytes // 0) / 1048576 | round) MiB) | \($r.cpu | cores) | \(errs) | \(rt_checks) |"),
"",
"### end-to-end job latency at a steady \($s.rate | num) jobs/s, \($s.workers) long-polling workers",
"",
"One producer appends jobs on a fixed schedule (one job per POST while it keeps up; jobs that fell due during a slow round trip go together in the next POST), each carrying the time its POST was sent; workers `claim {max: \($s.claim_batch), wait_ms: \($s.wait_ms)}` and ack. Latency per job sent in the measured window: *send → claim* from the append being sent to the claim answer that carries the job arriving at a worker; *append-ack → claim* from the producer receiving the append answer (a claim that beats the answer counts as 0); *send → acked* until the ack of the worker is answered.",
"",
"| queue | achieved rate (target) | send → claim p50 | p90 | p99 | max | append-ack → claim p50 / p99 | send → acked p50 / p99 | append round trip p50 / p99 | jobs per claim | CPU cores: server / load / rest | errors | delivery |",
"|---|---|---|---|---|---|---|---|---|---|---|---|---|",
(.reports[] | select(.workload == "queue-latency") as $r | $r.runs[] |
  (.exactly_once and .errors == 0) as $run_ok |
  "| `\($r.class)` | \(.records_per_s | num) jobs/s (\(.rate_target | num)) | **\(.p50_us | lat)** | \(.p90_us | lat) | **\(.p99_us | lat)** | \(.max_us | lat) | \(.ack_to_claim_p50_us | lat) / \(.ack_to_claim_p99_us | lat) | \(.send_to_done_p50_us | lat) / \(.send_to_done_p99_us | lat) | \(.append_rtt_p50_us | lat) / \(.append_rtt_p99_us | lat) (\(.append_requests | num) POSTs, ≤ \(.max_batch) jobs) | \(.jobs_per_claim) | \($r.cpu | cores) | \(errs) | \(lat_checks($run_ok)) |"),
"",
"Commands, in order (each against its own fresh server):",
"",
(.reports[] | "- `\(.command)`")
'
jq -r "$TABLE_JQ" "$OUT_DIR/queue-latest.json" >"$OUT_DIR/queue-latest.md"
cat "$OUT_DIR/queue-latest.md"
log "wrote $OUT_DIR/queue-latest.md and $OUT_DIR/queue-latest.json"
