#!/usr/bin/env bash
# Live-delivery benchmarks of topics (issue 5): SSE watch fan-out, idle watch streams, and a
# router under a single-client writer. Builds the release binaries, starts a server with a
# fresh data dir for every run (taskset -c 0, --shards 1; the load generator pinned to CPU 1),
# runs the workloads of perf/ (topics-load), prints one Markdown table and writes it and the
# raw JSON to perf/results/live.{md,json}.
#
#   scripts/live.sh                    # fanout 1/100/1000 watchers, watch-idle 10,000, router
#   DURATION=5 scripts/live.sh         # shorter runs (seconds per measured run, default 10)
#
# Environment: DURATION (10), WARMUP (1), RATE (1000 records/s for fanout), WATCHERS ("1 100
# 1000"), IDLE_STREAMS (10000), HOLD (5 s the idle streams are held), PORT (4781), OUT_DIR
# (perf/results), CARGO_TARGET_DIR (target), LOAD_ARGS (extra topics-load flags), QUIET_WAIT
# (60: seconds to wait before each run for other work on the machine to stop), TOPICS_SERVER
# (a prebuilt server binary instead of the workspace's; TOPICS_SERVER_COMMIT names its commit),
# ROWS ("fanout idle router": which workloads to run, e.g. ROWS=fanout for the fan-out rows only).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
RATE=${RATE:-1000}
WATCHERS=${WATCHERS:-1 100 1000}
IDLE_STREAMS=${IDLE_STREAMS:-10000}
HOLD=${HOLD:-5}
PORT=${PORT:-4781}
OUT_DIR=${OUT_DIR:-$ROOT/perf/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD_ARGS=${LOAD_ARGS:-}
QUIET_WAIT=${QUIET_WAIT:-60}
ROWS_GIVEN=${ROWS:-}
ROWS=${ROWS:-fanout idle router}
COMMAND="DURATION=$DURATION${ROWS_GIVEN:+ ROWS=\"$ROWS_GIVEN\"} scripts/live.sh${*:+ $*}"

case "${1:-}" in
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "live.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac

log() { echo "live.sh: $*" >&2; }

need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# Every stream is a socket on both sides: raise the open-file limit of this shell (inherited
# by the server and the load generator) as far as the hard limit allows.
WANT_FDS=65536
HARD_FDS=$(ulimit -Hn)
if [ "$HARD_FDS" = unlimited ] || [ "$HARD_FDS" -ge "$WANT_FDS" ]; then
    ulimit -n "$WANT_FDS"
else
    ulimit -n "$HARD_FDS"
    log "open-file hard limit is $HARD_FDS (< $WANT_FDS); using it"
fi
if [ "$(ulimit -n)" -lt $((IDLE_STREAMS + 256)) ]; then
    log "ulimit -n $(ulimit -n) is too low for $IDLE_STREAMS streams; raise the hard limit"
    exit 1
fi

if [ -n "${TOPICS_SERVER:-}" ]; then
    log "building the load generator (cargo build --release -p perf)"
    (cd "$ROOT" && cargo build --release -p perf --quiet)
else
    log "building release binaries (cargo build --release -p topics -p perf)"
    (cd "$ROOT" && cargo build --release -p topics -p perf --quiet)
fi
SERVER=${TOPICS_SERVER:-$TARGET_DIR/release/topics}
LOAD=$TARGET_DIR/release/topics-load
TARGET_URL="http://127.0.0.1:$PORT"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/topics-live.XXXXXX")
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
    if curl -fs "$TARGET_URL/v0/ready" >/dev/null 2>&1; then
        log "something already answers on port $PORT; set PORT="
        exit 1
    fi
    DATA_DIR=$(mktemp -d "$WORK/data.XXXXXX")
    taskset -c 0 "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" --shards 1 \
        >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    SERVER_CMD="ulimit -n $(ulimit -n); taskset -c 0 topics --port $PORT --data-dir <fresh tmp> --shards 1"
    for _ in $(seq 1 300); do
        curl -fs "$TARGET_URL/v0/ready" >/dev/null 2>&1 && return 0
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

server_rss_mib() {
    awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$SERVER_PID/status" 2>/dev/null || echo null
}



server_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0; }

# run WORKLOAD-ARGS...: a fresh server, one topics-load invocation on CPU 1, its JSON kept with
# the exact command, the server's RSS afterwards and where the CPU went meanwhile. An argument
# SERVER_PID becomes the server's process id.
run() {
    start_server
    local args=() a
    for a in "$@"; do
        [ "$a" = SERVER_PID ] && a=$SERVER_PID
        args+=("$a")
    done
    # shellcheck disable=SC2206
    local cmd=(topics-load --url "$TARGET_URL" "${args[@]}" --duration-secs "$DURATION"
        --warmup-secs "$WARMUP" --cpu 1 $LOAD_ARGS)
    wait_quiet
    log "${cmd[*]}"
    local out s0 b0 s1 b1 rss
    s0=$(server_ticks); b0=$(busy_ticks)
    if ! out=$("$LOAD" "${cmd[@]:1}" --json); then
        log "topics-load failed; server log tail:"
        tail -n 20 "$WORK/server.log" >&2
        exit 1
    fi
    s1=$(server_ticks); b1=$(busy_ticks)
    rss=$(server_rss_mib)
    stop_server
    jq -c --arg command "${cmd[*]}" --arg server "$SERVER_CMD" --argjson st $((s1 - s0)) \
        --argjson bt $((b1 - b0)) --argjson rss "$rss" '
        def r2: . * 100 | round / 100;
        . + {command: $command, server: $server, server_rss_after_mib: $rss, cpu: {
            wall_s: .wall_s, load_s: .client_cpu_s, server_s: ($st / 100),
            rest_s: ([($bt - $st) / 100 - (.client_cpu_s // 0), 0] | max | r2)}}
        ' <<<"$out" >>"$RUNS"
    jq -r '.workload as $w | .runs[] | "live.sh:   \(.name): " + (
        if $w == "fanout" then "p50 \(.p50_us) µs, p99 \(.p99_us) µs, delivery \(.delivery_ratio)"
        elif $w == "watch-idle" then "server RSS +\(.rss_growth_mib) MiB, \(.rss_per_stream_bytes) B/stream"
        else "\(.records_per_s) appends/s, forwarded \(.forwarded_per_s)/s, drain \(.drain_ms) ms" end
        ) + ", errors \(.errors)"' <<<"$out" >&2
}

BUSY_BEFORE=$(cpu_busy_pct)
[ "$BUSY_BEFORE" -gt 10 ] && log "warning: the machine is ${BUSY_BEFORE}% busy before the run"

want() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if want fanout; then
    for n in $WATCHERS; do
        run --workload fanout --watchers "$n" --rate "$RATE"
    done
fi
if want idle; then
    # The streams are held HOLD seconds: DURATION is the hold time for watch-idle.
    DURATION_SAVED=$DURATION
    DURATION=$HOLD
    run --workload watch-idle --watchers "$IDLE_STREAMS" --server-pid SERVER_PID
    DURATION=$DURATION_SAVED
fi
if want router; then
    run --workload router --durability disk
fi

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
    --arg busy "$BUSY_BEFORE" --arg busy_after "$(cpu_busy_pct)" '{
        date: $date,
        machine: {nproc: ($nproc | tonumber), cpu: $model, kernel: $kernel,
                  busy_pct_before: ($busy | tonumber), busy_pct_after: ($busy_after | tonumber)},
        commit: $commit, command: $command, duration_s: ($duration | tonumber),
        reports: .
    }' "$RUNS" >"$OUT_DIR/live.json"

# shellcheck disable=SC2016 # jq variables, not shell ones
TABLE_JQ='
def commas: (floor | tostring | explode | reverse) as $d
    | [range(0; $d | length; 3) as $i | $d[$i:$i + 3] | reverse | implode] | reverse | join(",");
def lat: if . == null then "—" elif . < 1000 then "\(.) µs" else "\((. / 10 | round) / 100) ms" end;
def mib: if . == null then "?" else "\(.) MiB" end;
def yes($ok): if $ok then "met" else "**not met**" end;
def cores: . as $c | ($c.wall_s // 0) as $w | if $w <= 0 then "—" else
    [($c.server_s, $c.load_s, $c.rest_s) | if . == null then "?" else (. / $w * 100 | round / 100 | tostring) end]
    | join(" / ") + (if ($c.rest_s // 0) / $w > 0.1 then " ⚠" else "" end) end;
def errs: if .errors == 0 then "0" else "**\(.errors)** \(.first_error // "" | .[0:80])" end;
def row($r; $run):
    if $r.workload == "fanout" then
      ["fanout", "\($run.watchers | commas) watcher(s) on 1 topic, writer at \($run.rate_target | commas) records/s",
       "\($run.records_per_s | commas) records/s written; delivered \($run.delivered | commas) of \($run.expected | commas) (ratio \($run.delivery_ratio)), lost \($run.lost), dup \($run.duplicates); append RTT p50 \($run.append_rtt_p50_us | lat); largest catch-up batch \($run.max_batch); send→frame p99 \($run.send_to_frame_p99_us | lat)",
       ($run.p50_us | lat), ($run.p99_us | lat), ($run.p999_us | lat),
       (if $run.watchers >= 1000 then
          "p50 < 1 ms, p99 < 5 ms, none lost: " + yes($run.p50_us < 1000 and $run.p99_us < 5000 and $run.lost == 0)
        else "—" end)]
    elif $r.workload == "watch-idle" then
      ["watch-idle", "\($run.streams | commas) idle streams (1 session each) over \($r.params.topics) topics, held \($r.params.hold_s) s",
       "server RSS \($run.rss_before_mib | mib) → \($run.rss_held_mib | mib) (+\($run.rss_growth_mib | mib), \($run.rss_per_stream_bytes // 0 | commas) B/stream), \($run.rss_after_close_mib | mib) 2 s after closing; \($run.streams_open | commas) opened at \($run.opens_per_s | commas)/s (open latency in the p columns)",
       ($run.open_p50_us | lat), ($run.open_p99_us | lat), ($run.open_p999_us | lat),
       "growth < 100 MiB: " + yes($run.rss_growth_mib != null and $run.rss_growth_mib < 100 and $run.streams_open == $run.streams)]
    elif $r.workload == "router" then
      ["router", "1 client, 1 record/POST into src (`\($r.params.durability)`), router src → dst",
       "source \($run.records_per_s | commas) appends/s, forwarded \($run.forwarded_per_s // 0 | commas)/s (\($run.forwarded_to_appended)×); lag (appended − forwarded) at most \($run.lag_max) while writing (polled every 50 ms), \($run.lag_at_stop) at the first poll after the writer stopped, 0 after \($run.drain_ms // "—") ms (5 ms polls); dst copies \($run.dst_copies | commas) of \($run.appended_total | commas)",
       ($run.p50_us | lat), ($run.p99_us | lat), ($run.p999_us | lat),
       "keeps up: " + yes(($run.forwarded_to_appended // 0) >= 0.99 and $run.final_lag == 0)]
    else [$r.workload, "", "", "", "", "", ""] end
    | . + [($r.cpu | cores), ($run | errs)];
"## topics live delivery — \(.date)",
"",
"- machine: \(.machine.nproc) × \(.machine.cpu), \(.machine.kernel); CPUs \(.machine.busy_pct_before)% busy with other work just before the run, \(.machine.busy_pct_after)% just after",
"- commit: \(.commit)",
"- command: `\(.command)` (fanout and router: \(.duration_s) s measured after 1 s warm-up; 256-byte records; a fresh server per row)",
"- server: `\(.reports[0].server)`; load: `topics-load --cpu 1` (the fanout writer on its own executor, same CPU)",
"- p50 / p99 / p999: fanout — append-ack → frame-received per delivered record; watch-idle — opening one stream (POST /v0/watch, GET, first `caught-up`); router — the source append round trip",
"- CPU cores: CPU time of the server, the load generator and the rest of the machine (kernel network work of both sides lands partly here) during the whole `topics-load` invocation over its wall time; ⚠ marks more than 0.1 core outside the two processes",
"",
"| workload | shape | figures | p50 | p99 | p999 | target (issue 5) | CPU cores: server / load / rest | errors |",
"|---|---|---|---|---|---|---|---|---|",
(.reports[] as $r | $r.runs[] as $run | row($r; $run) | "| " + join(" | ") + " |")
'
jq -r "$TABLE_JQ" "$OUT_DIR/live.json" >"$OUT_DIR/live.md"
cat "$OUT_DIR/live.md"
log "wrote $OUT_DIR/live.md and $OUT_DIR/live.json"
