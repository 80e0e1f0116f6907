#!/usr/bin/env bash
# Durable Streams benchmarks (issue 8): appends, SSE fan-out and catch-up reads on /v1/stream.
# Builds the release binaries, starts a server with a fresh data dir for every run (taskset -c 0,
# --shards 1, default --ds-durability fsync; the load generator pinned to CPU 1), runs the ds-*
# workloads of perf/ (topics-load) REPEAT times each, prints one Markdown table of the medians
# and writes it and the raw JSON to perf/results/ds-latest.{md,json}.
#
#   scripts/ds-load.sh                 # ds-append, ds-fanout (1,000 subscribers), ds-catchup
#   REPEAT=1 DURATION=5 scripts/ds-load.sh
#   ROWS=append scripts/ds-load.sh     # only some rows: append fanout catchup
#   REFERENCE=1 scripts/ds-load.sh     # the same rows against Electric's durable-streams
#                                      # server (crates.io durable-streams 0.1.5, installed
#                                      # under $CARGO_TARGET_DIR/ds-reference), same pinning
#
# Environment: DURATION (10 s per measured run), WARMUP (1), REPEAT (3 runs per row; the table
# gives the median of each figure), CONNECTIONS (64) and STREAMS (100) for ds-append,
# SUBSCRIBERS (1000) and RATE (1000 records/s) for ds-fanout, CATCHUP_RECORDS (1000000),
# CATCHUP_BATCH (1000 records per fill POST) and CATCHUP_READERS ("1 8") for ds-catchup, PORT
# (4790), OUT_DIR (perf/results), CARGO_TARGET_DIR (target), LOAD_ARGS (extra topics-load flags),
# OUT_NAME (ds-latest; ds-reference with REFERENCE=1), SERVER_ARGS (extra server flags), QUIET_WAIT (60: seconds to wait before each run for other
# work on the machine to stop), TOPICS_SERVER (a prebuilt server binary instead of the
# workspace's; TOPICS_SERVER_COMMIT names its commit), ROWS ("append fanout catchup").
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
REPEAT=${REPEAT:-3}
CONNECTIONS=${CONNECTIONS:-64}
STREAMS=${STREAMS:-100}
SUBSCRIBERS=${SUBSCRIBERS:-1000}
RATE=${RATE:-1000}
CATCHUP_RECORDS=${CATCHUP_RECORDS:-1000000}
CATCHUP_BATCH=${CATCHUP_BATCH:-1000}
CATCHUP_READERS=${CATCHUP_READERS:-1 8}
PORT=${PORT:-4790}
OUT_DIR=${OUT_DIR:-$ROOT/perf/results}
OUT_NAME=${OUT_NAME:-ds-latest}
[ "${REFERENCE:-0}" = 1 ] && [ "$OUT_NAME" = ds-latest ] && OUT_NAME=ds-reference
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD_ARGS=${LOAD_ARGS:-}
SERVER_ARGS=${SERVER_ARGS:-}
QUIET_WAIT=${QUIET_WAIT:-60}
ROWS_GIVEN=${ROWS:-}
ROWS=${ROWS:-append fanout catchup}
COMMAND="REPEAT=$REPEAT DURATION=$DURATION${ROWS_GIVEN:+ ROWS=\"$ROWS_GIVEN\"} scripts/ds-load.sh${*:+ $*}"

case "${1:-}" in
    -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "ds-load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

log() { echo "ds-load.sh: $*" >&2; }

need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Every subscriber is a socket on both sides: raise the open-file limit of this shell
# (inherited by the server and the load generator) as far as the hard limit allows.
WANT_FDS=20000
HARD_FDS=$(ulimit -Hn)
if [ "$HARD_FDS" = unlimited ] || [ "$HARD_FDS" -ge "$WANT_FDS" ]; then
    ulimit -n "$WANT_FDS"
else
    ulimit -n "$HARD_FDS"
    log "open-file hard limit is $HARD_FDS (< $WANT_FDS); using it"
fi
if [ "$(ulimit -n)" -lt $((SUBSCRIBERS + 256)) ]; then
    log "ulimit -n $(ulimit -n) is too low for $SUBSCRIBERS subscribers; raise the hard limit"
    exit 1
fi

REF_VERSION=${REF_VERSION:-0.1.5}
if [ "${REFERENCE:-0}" = 1 ]; then
    REF_ROOT=$TARGET_DIR/ds-reference
    if [ ! -x "$REF_ROOT/bin/durable-streams-server" ]; then
        log "installing the reference server (cargo install --locked durable-streams@$REF_VERSION)"
        CARGO_TARGET_DIR=$TARGET_DIR/ds-reference-build cargo install --quiet --locked \
            "durable-streams@$REF_VERSION" --root "$REF_ROOT"
    fi
    TOPICS_SERVER=$REF_ROOT/bin/durable-streams-server
    TOPICS_SERVER_COMMIT="crates.io durable-streams $REF_VERSION (the reference, not topics)"
fi
if [ -n "${TOPICS_SERVER:-}" ]; then
    log "building the load generator (cargo build --release -p perf, CARGO_TARGET_DIR=$TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p perf --quiet)
else
    log "building release binaries (cargo build --release -p topics -p perf, CARGO_TARGET_DIR=$TARGET_DIR)"
    (cd "$ROOT" && CARGO_TARGET_DIR=$TARGET_DIR cargo build --release -p topics -p perf --quiet)
fi
SERVER=${TOPICS_SERVER:-$TARGET_DIR/release/topics}
LOAD=$TARGET_DIR/release/topics-load
TARGET_URL="http://127.0.0.1:$PORT"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/topics-ds.XXXXXX")
RUNS=$WORK/runs.jsonl
: >"$RUNS"
SERVER_PID=""
SERVER_CMD=""
DATA_DIR=""

cleanup() {
    stop_server || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server: a fresh data dir, the server pinned to CPU 0 with one shard, wait for ready.
start_server() {
    if curl -s -o /dev/null "$TARGET_URL/" 2>/dev/null; then
        log "something already answers on port $PORT; set PORT="
        exit 1
    fi
    DATA_DIR=$(mktemp -d "$WORK/data.XXXXXX")
    if [ "${REFERENCE:-0}" = 1 ]; then
        # shellcheck disable=SC2086
        taskset -c 0 "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" $SERVER_ARGS \
            >>"$WORK/server.log" 2>&1 &
        SERVER_CMD="ulimit -n $(ulimit -n); taskset -c 0 durable-streams-server --port $PORT --data-dir <fresh tmp>${SERVER_ARGS:+ $SERVER_ARGS}"
    else
        # shellcheck disable=SC2086
        taskset -c 0 "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" --shards 1 $SERVER_ARGS \
            >>"$WORK/server.log" 2>&1 &
        SERVER_CMD="ulimit -n $(ulimit -n); taskset -c 0 topics --port $PORT --data-dir <fresh tmp> --shards 1${SERVER_ARGS:+ $SERVER_ARGS}"
    fi
    SERVER_PID=$!
    for _ in $(seq 1 300); do
        # Up once a missing stream answers 404 (both servers speak /v1).
        [ "$(curl -s -o /dev/null -w '%{http_code}' -I "$TARGET_URL/v1/stream/ds-load-probe")" = 404 ] &&
            return 0
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.1
    done
    log "server did not become ready; its log:"
    tail -n 30 "$WORK/server.log" >&2
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



server_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0; }

# run ROW REP WORKLOAD-ARGS...: a fresh server, one topics-load invocation on CPU 1, its JSON
# kept with the row label, the exact command and where the CPU went meanwhile (server, load
# generator, rest of the machine: other work skews the figures).
run() {
    local row=$1 rep=$2; shift 2
    start_server
    # shellcheck disable=SC2206
    local cmd=(topics-load --url "$TARGET_URL" "$@" --duration-secs "$DURATION"
        --warmup-secs "$WARMUP" --cpu 1 $LOAD_ARGS)
    wait_quiet
    log "$row #$rep: ${cmd[*]}"
    local out s0 b0 s1 b1
    s0=$(server_ticks); b0=$(busy_ticks)
    if ! out=$("$LOAD" "${cmd[@]:1}" --json); then
        log "topics-load failed; server log tail:"
        tail -n 20 "$WORK/server.log" >&2
        exit 1
    fi
    s1=$(server_ticks); b1=$(busy_ticks)
    stop_server
    jq -c --arg row "$row" --argjson rep "$rep" --arg command "${cmd[*]}" \
        --arg server "$SERVER_CMD" --argjson st $((s1 - s0)) --argjson bt $((b1 - b0)) '
        def r2: . * 100 | round / 100;
        . + {row: $row, rep: $rep, command: $command, server: $server, cpu: {
            wall_s: .wall_s, load_s: .client_cpu_s, server_s: ($st / 100),
            rest_s: ([($bt - $st) / 100 - (.client_cpu_s // 0), 0] | max | r2)}}
        ' <<<"$out" >>"$RUNS"
    jq -r '.workload as $w | .runs[] | select(.name != "fill") | "ds-load.sh:   \(.name): " + (
        if $w == "ds-fanout" then "p50 \(.p50_us) µs, p99 \(.p99_us) µs, p999 \(.p999_us) µs, delivered \(.delivered)/\(.expected), lost \(.lost)"
        elif $w == "ds-catchup" then "\(.records_per_s) records/s, \(.mb_per_s) MB/s, verified \(.verified)"
        else "\(.records_per_s) appends/s, p50 \(.p50_us) µs, p99 \(.p99_us) µs, p999 \(.p999_us) µs" end
        ) + ", errors \(.errors)"' <<<"$out" >&2
}

BUSY_BEFORE=$(cpu_busy_pct)
[ "$BUSY_BEFORE" -gt 10 ] && log "warning: the machine is ${BUSY_BEFORE}% busy before the run"

want() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

for rep in $(seq 1 "$REPEAT"); do
    if want append; then
        run append "$rep" --workload ds-append --connections "$CONNECTIONS" --topics "$STREAMS"
    fi
    if want fanout; then
        run fanout "$rep" --workload ds-fanout --watchers "$SUBSCRIBERS" --rate "$RATE"
    fi
    if want catchup; then
        for c in $CATCHUP_READERS; do
            run "catchup-$c" "$rep" --workload ds-catchup --records "$CATCHUP_RECORDS" \
                --batch "$CATCHUP_BATCH" --connections "$c"
        done
    fi
done

NPROC=$(nproc)
MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
KERNEL=$(uname -sr)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (with uncommitted changes)"; fi
if [ -n "${TOPICS_SERVER:-}" ]; then
    COMMIT="load generator at $COMMIT; server binary $TOPICS_SERVER (prebuilt${TOPICS_SERVER_COMMIT:+ from commit $TOPICS_SERVER_COMMIT})"
fi
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$OUT_DIR"
jq -s --arg date "$DATE" --arg nproc "$NPROC" --arg model "$MODEL" --arg kernel "$KERNEL" \
    --arg commit "$COMMIT" --arg command "$COMMAND" --arg duration "$DURATION" \
    --arg busy "$BUSY_BEFORE" --arg busy_after "$(cpu_busy_pct)" --arg repeat "$REPEAT" '{
        date: $date,
        machine: {nproc: ($nproc | tonumber), cpu: $model, kernel: $kernel,
                  busy_pct_before: ($busy | tonumber), busy_pct_after: ($busy_after | tonumber)},
        commit: $commit, command: $command, duration_s: ($duration | tonumber),
        repeat: ($repeat | tonumber), reports: .
    }' "$RUNS" >"$OUT_DIR/$OUT_NAME.json"

# The table: one line per row, each figure the median over the row's runs (min–max beside the
# headline figure). Targets (issue 8): ds-append ≥ 1.2 × 65,000 = 78,000 appends/s; ds-fanout
# with 1,000 subscribers p99 ≤ 3.9 ms (half of the reference's 7.8 ms).
# shellcheck disable=SC2016 # jq variables, not shell ones
TABLE_JQ='
def commas: (floor | tostring | explode | reverse) as $d
    | [range(0; $d | length; 3) as $i | $d[$i:$i + 3] | reverse | implode] | reverse | join(",");
def lat: if . == null then "—" elif . < 1000 then "\(. | floor) µs" else "\((. / 10 | round) / 100) ms" end;
def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
    else (.[length / 2 - 1] + .[length / 2]) / 2 end;
def yes($ok): if $ok then "met" else "**not met**" end;
def range_of($k): (map(.[$k]) | min | commas) + "–" + (map(.[$k]) | max | commas);
def cores: map(.cpu) as $c | ($c | map(.wall_s) | add) as $w | if ($w // 0) <= 0 then "—" else
    [($c | map(.server_s) | add), ($c | map(.load_s) | add), ($c | map(.rest_s) | add)]
    | map(. / $w * 100 | round / 100 | tostring) | join(" / ")
    + (if ($c | map(.rest_s) | add) / $w > 0.1 then " ⚠" else "" end) end;
def m($k): map(.[$k]) | median;
.reports as $all
| ($all | reduce .[].row as $r ([]; if any(.[]; . == $r) then . else . + [$r] end)) as $rows
| "## Durable Streams load — \(.date)",
"",
"- machine: \(.machine.nproc) × \(.machine.cpu), \(.machine.kernel); CPUs \(.machine.busy_pct_before)% busy with other work just before the run, \(.machine.busy_pct_after)% just after",
"- commit: \(.commit)",
"- command: `\(.command)` (\(.repeat) run(s) per row, each on a fresh server; append and fanout: \(.duration_s) s measured after 1 s warm-up; 256-byte JSON records; figures are medians over the runs, the range is min–max)",
"- server: `\($all[0].server)` (default `--ds-durability fsync`); load: `topics-load --cpu 1`",
"- CPU cores: CPU time of the server, the load generator and the rest of the machine during the `topics-load` invocations over their wall time, summed over the row'"'"'s runs; ⚠ marks more than 0.1 core outside the two processes",
"",
"| workload | shape | throughput (median, range) | p50 | p99 | p999 | other figures (medians) | target (issue 8) | CPU cores: server / load / rest | errors |",
"|---|---|---|---|---|---|---|---|---|---|",
($rows[] as $row
 | [$all[] | select(.row == $row)] as $rs
 | ($rs[0].workload) as $w
 | [$rs[] | .runs[] | select(.name != "fill")] as $runs
 | ([$rs[] | .runs[] | select(.name == "fill")]) as $fills
 | if $w == "ds-append" then
     ["ds-append", "\($rs[0].params.connections) conns × \($rs[0].params.streams) streams, 1 JSON record/POST",
      "**\($runs | m("records_per_s") | commas)** appends/s (\($runs | range_of("records_per_s")))",
      ($runs | m("p50_us") | lat), ($runs | m("p99_us") | lat), ($runs | m("p999_us") | lat),
      "max \($runs | m("max_us") | lat)",
      "≥ 78,000 appends/s: " + yes(($runs | m("records_per_s")) >= 78000)]
   elif $w == "ds-fanout" then
     ["ds-fanout", "\($runs[0].subscribers | commas) `live=sse` subscribers on 1 stream, writer at \($runs[0].rate_target | commas) records/s",
      "\($runs | m("records_per_s") | commas) records/s written; delivered \($runs | map(.delivered) | add | commas) of \($runs | map(.expected) | add | commas), lost \($runs | map(.lost) | add), dup \($runs | map(.duplicates) | add)",
      ($runs | m("p50_us") | lat), "**\($runs | m("p99_us") | lat)** (\($runs | map(.p99_us) | min | lat)–\($runs | map(.p99_us) | max | lat))", ($runs | m("p999_us") | lat),
      "append RTT p50 \($runs | m("append_rtt_p50_us") | lat), p99 \($runs | m("append_rtt_p99_us") | lat); \($runs | m("records_per_data_event")) records per data event; send→event p99 \($runs | m("send_to_event_p99_us") | lat); open p99 \($runs | m("open_p99_us") | lat)",
      (if $runs[0].subscribers >= 1000 then "p99 ≤ 3.9 ms: " + yes(($runs | m("p99_us")) <= 3900 and ($runs | map(.lost) | add) == 0) else "—" end)]
   elif $w == "ds-catchup" then
     ["ds-catchup", "\($runs[0].readers) reader(s) × the whole stream of \($runs[0].stream_records | commas) records from offset -1 at once",
      "**\($runs | m("records_per_s") | commas)** records/s, **\($runs | m("mb_per_s"))** MB/s (\($runs | range_of("records_per_s")) records/s)",
      ($runs | m("p50_us") | lat), ($runs | m("p99_us") | lat), ($runs | m("p999_us") | lat),
      "per page (1 GET); one reader'"'"'s pass p50 \($runs | m("pass_p50_us") | lat); verified \($runs | map(.verified) | all); fill \($fills | map(.records_per_s) | select(length > 0) | median | commas) records/s",
      "—"]
   else [$w, "", "", "", "", "", "", ""] end
 | . + [($rs | cores), ($runs | map(.errors) | add | tostring)]
 | "| " + join(" | ") + " |")
'
jq -r "$TABLE_JQ" "$OUT_DIR/$OUT_NAME.json" >"$OUT_DIR/$OUT_NAME.md"
cat "$OUT_DIR/$OUT_NAME.md"
log "wrote $OUT_DIR/$OUT_NAME.md and $OUT_DIR/$OUT_NAME.json"
