#!/usr/bin/env bash
# The benchmark harness of topics: builds the release binaries, starts the server with a fresh
# data dir pinned with taskset (round 1: server on CPU 0 with --shards 1, load generator on
# CPU 1; round 2: server on both cores with --shards 2, load generator unpinned), runs the
# fixed workloads of perf/ (topics-load), prints one Markdown table and writes it and the raw
# JSON to perf/results/latest.{md,json}. Round 1 ends with the `topics` workload (appends over
# TOPICS lazily created topics) on a fresh server of its own, so that its RSS starts clean.
#
#   scripts/load.sh                    # both rounds against a server it starts
#   scripts/load.sh --url URL          # the same workloads against a running server
#   scripts/load.sh --ceiling          # also a static 200 from nginx, the same append shape
#   DURATION=5 scripts/load.sh         # shorter runs (seconds per measured run, default 10)
#
# Environment: DURATION (10), WARMUP (1), PRELOAD (1000000 records for diff), TOPICS (100000
# topics for the topics workload), PORT (4780),
# OUT_DIR (perf/results), CARGO_TARGET_DIR (target), LOAD_ARGS (extra topics-load flags),
# QUIET_WAIT (60: seconds to wait before each run for other work on the machine to stop),
# TOPICS_SERVER (a prebuilt server binary to benchmark instead of building the workspace's;
# TOPICS_SERVER_COMMIT names the commit it was built from, for the table).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
PRELOAD=${PRELOAD:-1000000}
TOPICS=${TOPICS:-100000}
PORT=${PORT:-4780}
OUT_DIR=${OUT_DIR:-$ROOT/perf/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LOAD_ARGS=${LOAD_ARGS:-}
QUIET_WAIT=${QUIET_WAIT:-60}
COMMAND="DURATION=$DURATION scripts/load.sh${*:+ $*}"

URL=""
CEILING=0
while [ $# -gt 0 ]; do
    case "$1" in
        --url) URL=${2:?--url needs a URL}; shift 2 ;;
        --url=*) URL=${1#--url=}; shift ;;
        --ceiling) CEILING=1; shift ;;
        -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "load.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

log() { echo "load.sh: $*" >&2; }

# Tools: jq renders the table; curl waits for readiness; taskset pins.
need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
NGINX=$(command -v nginx || true)
[ -z "$NGINX" ] && [ -x /usr/sbin/nginx ] && NGINX=/usr/sbin/nginx
if [ "$CEILING" = 1 ] && [ -z "$NGINX" ]; then need_pkgs+=(nginx-light); fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${need_pkgs[*]}"
    # Keep the package scripts from starting a system nginx on port 80.
    POLICY=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        POLICY=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null && $SUDO chmod +x "$POLICY"
    fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
    [ -n "$POLICY" ] && $SUDO rm -f "$POLICY"
    NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi


if [ -n "$URL" ] || [ -n "${TOPICS_SERVER:-}" ]; then
    log "building the load generator (cargo build --release -p perf)"
    (cd "$ROOT" && cargo build --release -p perf --quiet)
else
    log "building release binaries (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace --quiet)
fi
SERVER=${TOPICS_SERVER:-$TARGET_DIR/release/topics}
LOAD=$TARGET_DIR/release/topics-load

WORK=$(mktemp -d "${TMPDIR:-/tmp}/topics-load.XXXXXX")
RUNS=$WORK/runs.jsonl
NOTES=$WORK/notes.jsonl
: >"$RUNS"; : >"$NOTES"
SERVER_PID=""
DATA_DIR=""

cleanup() {
    stop_server || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_server CPUS SHARDS: a fresh data dir, the server pinned to CPUS, wait for /v0/ready.
start_server() {
    local cpus=$1 shards=$2
    if curl -fs "http://127.0.0.1:$PORT/v0/ready" >/dev/null 2>&1; then
        log "something already answers on port $PORT; set PORT="
        exit 1
    fi
    DATA_DIR=$(mktemp -d "$WORK/data.XXXXXX")
    # --max-topics 0: the topics workload may create more than the default cap (100,000).
    taskset -c "$cpus" "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" --shards "$shards" \
        --max-topics 0 >>"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    SERVER_CMD="taskset -c $cpus topics --port $PORT --data-dir <fresh tmp> --shards $shards --max-topics 0"
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
    tail -n 30 "$WORK/server.log" >&2
    exit 1
}

server_rss_mib() {
    [ -n "$SERVER_PID" ] && awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$SERVER_PID/status" 2>/dev/null
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

# start_nginx CPU: one nginx process pinned to CPU answering every request with a static 200.
start_nginx() {
    local cpu=$1 conf=$WORK/nginx.conf
    mkdir -p "$WORK/nginx"
    cat >"$conf" <<NGINX_CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    server {
        listen 127.0.0.1:$PORT;
        default_type application/json;
        location / { return 200 '{"ok":true}'; }
    }
}
NGINX_CONF
    if curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1; then
        log "something already answers on port $PORT; set PORT="
        exit 1
    fi
    taskset -c "$cpu" "$NGINX" -c "$conf" -p "$WORK/nginx" >>"$WORK/nginx/stderr.log" 2>&1 &
    SERVER_PID=$!
    SERVER_CMD="taskset -c $cpu nginx (1 process, return 200)"
    for _ in $(seq 1 100); do
        curl -fs "http://127.0.0.1:$PORT/" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    log "nginx did not start:"
    cat "$WORK/nginx/stderr.log" "$WORK/nginx/error.log" >&2 2>/dev/null || true
    exit 1
}


# CPU time in USER_HZ ticks: of the server process (all its threads, io_uring workers
# included), and of the whole machine (user, nice, system, irq, softirq).
server_ticks() {
    if [ -n "$SERVER_PID" ] && [ -r "/proc/$SERVER_PID/stat" ]; then
        awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$SERVER_PID/stat"
    else
        echo 0
    fi
}

# run SETUP LOAD-PLACEMENT... -- WORKLOAD-ARGS...: one topics-load invocation, its JSON kept
# with the setup label, the exact command, and where the CPU went meanwhile (server, load
# generator, rest of the machine: other work skews the figures). The rest is what /proc/stat
# counts beyond the two processes, floored at 0 (tick sampling makes it a little noisy).
run() {
    local setup=$1; shift
    local placement=()
    while [ "$1" != "--" ]; do placement+=("$1"); shift; done
    shift
    # shellcheck disable=SC2206
    local cmd=(topics-load --url "$TARGET_URL" "$@" --duration-secs "$DURATION"
        --warmup-secs "$WARMUP" "${placement[@]}" $LOAD_ARGS)
    wait_quiet
    log "$setup: ${cmd[*]}"
    local out s0 b0 s1 b1
    s0=$(server_ticks); b0=$(busy_ticks)
    if ! out=$("$LOAD" "${cmd[@]:1}" --json); then
        log "topics-load failed; server log tail:"
        tail -n 20 "$WORK/server.log" >&2
        exit 1
    fi
    s1=$(server_ticks); b1=$(busy_ticks)
    local known=false
    [ -n "$SERVER_PID" ] && known=true
    jq -c --arg setup "$setup" --arg command "${cmd[*]}" --argjson st $((s1 - s0)) \
        --argjson bt $((b1 - b0)) --argjson known "$known" '
        def r2: . * 100 | round / 100;
        . + {setup: $setup, command: $command, cpu: {
            wall_s: .wall_s,
            load_s: .client_cpu_s,
            server_s: (if $known then $st / 100 else null end),
            rest_s: ([($bt - (if $known then $st else 0 end)) / 100 - (.client_cpu_s // 0), 0] | max | r2)}}
        ' <<<"$out" >>"$RUNS"
    jq -r '.runs[] | "load.sh:   \(.name): \(.records_per_s) records/s, p50 \(.p50_us) µs, p99 \(.p99_us) µs, errors \(.errors)"' <<<"$out" >&2
}

# The workloads of one setup. $1: label, $2: "all" or "append", rest: load placement flags.
workloads() {
    local setup=$1 which=$2; shift 2
    local place=("$@")
    if [ "$which" = all ]; then
        run "$setup" "${place[@]}" -- --workload ack-latency
    fi
    run "$setup" "${place[@]}" -- --workload append --durability disk --connections 64 --topics 100
    run "$setup" "${place[@]}" -- --workload append --durability fsync --connections 64 --topics 100
    run "$setup" "${place[@]}" -- --workload append-batch --durability disk --connections 16 --batch 100
    run "$setup" "${place[@]}" -- --workload append-batch --durability fsync --connections 16 --batch 100
    if [ "$which" = all ]; then
        run "$setup" "${place[@]}" -- --workload diff --preload "$PRELOAD" --limit 1,256,1000 --connections 1
    fi
}

# The topics workload: $1 setup label, rest load placement flags (with --server-pid when the
# server is ours).
many_topics() {
    local setup=$1; shift
    run "$setup" "$@" -- --workload topics --topics "$TOPICS" --connections 64
}

note() {
    jq -nc --arg setup "$1" --arg server "$2" --arg load "$3" --arg rss "$4" \
        '{setup: $setup, server: $server, load: $load, server_rss_mib: $rss}' >>"$NOTES"
}

BUSY_BEFORE=$(cpu_busy_pct)
if [ "$BUSY_BEFORE" -gt 10 ]; then
    log "warning: the machine is ${BUSY_BEFORE}% busy before the run; figures will be skewed"
fi

if [ -n "$URL" ]; then
    TARGET_URL=$URL
    workloads "external" all
    many_topics "external"
    note "external" "$URL (already running)" "unpinned, 1 executor" ""
else
    TARGET_URL="http://127.0.0.1:$PORT"
    S1="1 core"
    start_server 0 1
    workloads "$S1" all --cpu 1
    note "$S1" "$SERVER_CMD" "topics-load --cpu 1" "$(server_rss_mib)"
    stop_server

    S1F="1 core, fresh server"
    start_server 0 1
    many_topics "$S1F" --cpu 1 --server-pid "$SERVER_PID"
    note "$S1F" "$SERVER_CMD" "topics-load --cpu 1" "$(server_rss_mib)"
    stop_server

    if [ "$CEILING" = 1 ]; then
        S0="ceiling"
        start_nginx 0
        run "$S0" --cpu 1 -- --workload append --durability disk --connections 64 --topics 100
        note "$S0" "$SERVER_CMD" "topics-load --cpu 1" ""
        stop_server
    fi

    S2="2 cores"
    start_server 0,1 2
    workloads "$S2" append --threads 2
    note "$S2" "$SERVER_CMD" "topics-load --threads 2 (unpinned)" "$(server_rss_mib)"
    stop_server
fi

# Machine, commit, and the document.
NPROC=$(nproc)
MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
KERNEL=$(uname -sr)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "$(git -C "$ROOT" status --porcelain 2>/dev/null)" ]; then COMMIT="$COMMIT (with uncommitted changes)"; fi
if [ -n "${TOPICS_SERVER:-}" ]; then
    COMMIT="load generator at $COMMIT; server binary $TOPICS_SERVER (prebuilt${TOPICS_SERVER_COMMIT:+ from commit $TOPICS_SERVER_COMMIT})"
fi
if [ -n "$URL" ]; then COMMIT="load generator at $COMMIT; server at $URL"; fi
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

mkdir -p "$OUT_DIR"
jq -s --slurpfile notes "$NOTES" --arg date "$DATE" --arg nproc "$NPROC" --arg model "$MODEL" \
    --arg kernel "$KERNEL" --arg commit "$COMMIT" --arg command "$COMMAND" \
    --arg duration "$DURATION" --arg busy "$BUSY_BEFORE" --arg busy_after "$(cpu_busy_pct)" '{
        date: $date,
        machine: {nproc: ($nproc | tonumber), cpu: $model, kernel: $kernel,
                  busy_pct_before: ($busy | tonumber), busy_pct_after: ($busy_after | tonumber)},
        commit: $commit, command: $command, duration_s: ($duration | tonumber),
        setups: $notes, reports: .
    }' "$RUNS" >"$OUT_DIR/latest.json"

# The Markdown table, rendered from latest.json.
# shellcheck disable=SC2016 # jq variables, not shell ones
TABLE_JQ='
def commas: (floor | tostring | explode | reverse) as $d
    | [range(0; $d | length; 3) as $i | $d[$i:$i + 3] | reverse | implode] | reverse | join(",");
def num: if . == null then "?" else commas end;
def lat: if . == null then "—" elif . < 1000 then "\(.) µs" else "\((. / 10 | round) / 100) ms" end;
def ms: if . == null then null elif . < 1 then "\((. * 1000 * 10 | round) / 10) µs" else "\((. * 100 | round) / 100) ms" end;
def served: [ (.server_total_ms_p50 | ms | select(.) | "total \(.)"),
              (if (.fsync_ms_p50 // 0) > 0 then "fsync \(.fsync_ms_p50 | ms)" else empty end) ]
    | if length == 0 then "—" else join(", ") end;
def errs: if .errors == 0 then "0" else "**\(.errors)** \(.non_2xx // {} | tojson) io \(.io_errors // 0)" end;
def cores: . as $c | ($c.wall_s // 0) as $w | if $w <= 0 then "—" else
    [($c.server_s, $c.load_s, $c.rest_s) | if . == null then "?" else (. / $w * 100 | round / 100 | tostring) end]
    | join(" / ") + (if ($c.rest_s // 0) / $w > 0.1 then " ⚠" else "" end) end;
def row($r; $p; $run):
    ($run.name) as $n
    | if $r.workload == "append" and $r.setup == "ceiling" then
        ["nginx `return 200`", "\($p.connections) conns, the `append disk` requests",
         "**\($run.records_per_s | commas)** req/s"]
      elif $r.workload == "append" then
        ["append `\($n)`", "\($p.connections) conns × \($p.topics) topics, 1 record/POST",
         "**\($run.records_per_s | commas)** appends/s"]
      elif $r.workload == "append-batch" then
        ["append-batch `\($n)`", "\($p.connections) writers × \($p.batch) records/POST, 1 topic",
         "**\($run.records_per_s | commas)** records/s (\($run.requests_per_s | commas) req/s)"]
      elif $r.workload == "ack-latency" then
        ["ack-latency `\($n)`", "1 conn, 1 record at a time", "\($run.requests_per_s | commas) acks/s"]
      elif $r.workload == "diff" and $n == "preload" then
        ["diff preload", "\($p.head_seq | commas) records, 8 conns × 1000 records/POST (`\($p.durability)`)",
         "\($run.records_per_s | commas) records/s"]
      elif $r.workload == "diff" then
        ["diff \($n)", "\($p.connections) reader, sequential over \($p.head_seq | commas) records",
         "**\($run.records_per_s | commas)** records/s (\($run.requests_per_s | commas) req/s)"]
      elif $r.workload == "topics" and $n == "create" then
        ["topics create pass", "\($p.topics | commas) first writes (each creates its topic, no PUT), \($p.connections) conns",
         "\($run.records_per_s | commas) creates/s; RSS \($run.rss_before_mib // "?") → \($run.rss_after_create_mib // "?") MiB (\($run.rss_per_topic_created_bytes | num) B/topic)"]
      elif $r.workload == "topics" then
        ["topics `\($n)`", "\($p.connections) conns round-robin over \($p.topics | commas) topics, 1 record/POST",
         "**\($run.records_per_s | commas)** appends/s; RSS \($run.rss_before_mib // "?") → \($run.rss_after_mib // "?") MiB with \($run.records_retained | commas) records retained (\($run.rss_per_topic_bytes | num) B/topic)"]
      else [$r.workload + " " + $n, "", "\($run.records_per_s | commas) records/s"] end
    | [$r.setup] + . + [($run.p50_us | lat), ($run.p99_us | lat), ($run.p999_us | lat), ($run | served),
       ($r.cpu | cores), ($run | errs)];
"## topics load — \(.date)",
"",
"- machine: \(.machine.nproc) × \(.machine.cpu), \(.machine.kernel); CPUs \(.machine.busy_pct_before)% busy with other work just before the run, \(.machine.busy_pct_after)% just after",
"- commit: \(.commit)",
"- command: `\(.command)` (each run \(.duration_s) s after 1 s warm-up; 256-byte records)",
"- CPU cores: CPU time of the server, the load generator and the rest of the machine during the whole `topics-load` invocation (set-up and warm-up included) over its wall time; ⚠ marks runs where other work used more than 0.1 core",
(.setups[] | "- \(.setup): server `\(.server)`; load `\(.load)`" + (if .server_rss_mib != "" then "; server RSS after the round \(.server_rss_mib) MiB" else "" end)),
(([.reports[] | select(.setup == "ceiling") | .runs[0].records_per_s] | first) as $ceil
 | select($ceil != null and $ceil > 0)
 | [.reports[] | select(.setup == "1 core" and .workload == "append") | .runs[0]
    | "`\(.name)` \((100 * .records_per_s / $ceil | round) / 100)×"]
 | "- ratio to the nginx ceiling (1 core, append): " + join(", ")),
"",
"| setup | workload | shape | throughput | p50 | p99 | p999 | server-reported p50 | CPU cores: server / load / rest | errors |",
"|---|---|---|---|---|---|---|---|---|---|",
(.reports[] as $r | $r.runs[] as $run | row($r; $r.params; $run) | "| " + join(" | ") + " |")
'
jq -r "$TABLE_JQ" "$OUT_DIR/latest.json" >"$OUT_DIR/latest.md"
cat "$OUT_DIR/latest.md"
log "wrote $OUT_DIR/latest.md and $OUT_DIR/latest.json"
