#!/usr/bin/env bash
# The storage measurements of issue 4 (segments, snapshots, compaction). Builds the release
# binaries, starts the server (pinned with taskset, default shard count 2) on a fresh data dir
# under a scratch directory, and with perf/ (topics-load, unpinned) measures:
#
#   1. fill: RECORDS records of RECORD_BYTES bytes of `data` (a JSON string; its encoded
#      length is the payload) into TOPICS `disk` topics, batches of BATCH, CONNECTIONS conns;
#   2. after the server settles: its RSS (VmRSS, and the VmHWM peak), the data dir's disk use
#      (du -sb apparent, du -sk allocated) and its ratio to the payload (RECORDS*RECORD_BYTES);
#   3. diff-range: records/s of limit-1000 diffs over the oldest SPAN records of every topic
#      and over the newest SPAN, and their ratio;
#   4. restart: kill -9, then the time from spawn to /v0/ready answering 200 (polled every
#      10 ms), the topics' counts checked against what was written; then the same after a
#      graceful SIGTERM stop;
#   5. reclaim: how long until the data dir shrinks by 80% of one topic's payload after all
#      its records are deleted (POST .../delete before_seq head+1), and after another is
#      cut to one record by a tightened cap (PUT cap_records 1);
#   6. many topics, on a fresh server: MANY_TOPICS topics of 10 records each (each created by
#      its first write), then the settled RSS.
#
# Prints one Markdown table and writes it and the raw JSON to perf/results/storage-latest.{md,json}.
#
#   scripts/storage.sh                                        # the full run (20M records, 1M topics)
#   RECORDS=200000 TOPICS=100 MANY_TOPICS=20000 SETTLE_MIN=0 RECLAIM_SECS=20 scripts/storage.sh
#
# Environment: RECORDS (20000000), TOPICS (1000), MANY_TOPICS (1000000), RECORD_BYTES (256),
# BATCH (500), CONNECTIONS (32), MANY_CONNECTIONS (64), SHARDS (2), SERVER_CPUS (0..SHARDS-1,
# at most the last CPU), SERVER_ARGS (extra server flags, e.g. "--hot-tail-bytes 33554432"),
# PORT (4790), LOAD_THREADS (1: topics-load executors, unpinned), DURATION (10: seconds per
# read run), WARMUP (1), SPAN (5000: records read at each end of each topic), READ_CONNECTIONS
# (8), SETTLE_MIN (35: seconds to wait at least after a fill, past the server's default 30 s
# checkpoint interval), SETTLE_QUIET (10: seconds RSS and disk use must hold still),
# SETTLE_SECS (120: longest wait), RECLAIM_SECS (120), RECLAIM_POLL (5), READY_TIMEOUT (600),
# DROP_CACHES (0; 1: drop the page cache before the read runs and before each restart, needs
# root), QUIET_WAIT (30: seconds to wait for other work on the machine to stop before a timed
# phase), SKIP_FILL=1 (skip steps 1-5), SKIP_MANY=1 (skip step 6), KEEP=1 (keep the scratch
# directory), SCRATCH (its parent, default $TMPDIR or /tmp), OUT_DIR (perf/results),
# CARGO_TARGET_DIR (target), TOPICS_SERVER (a prebuilt server binary to measure instead of
# building the workspace's; TOPICS_SERVER_COMMIT names the commit it was built from).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"
RECORDS=${RECORDS:-20000000}
TOPICS=${TOPICS:-1000}
MANY_TOPICS=${MANY_TOPICS:-1000000}
MANY_PER_TOPIC=10
RECORD_BYTES=${RECORD_BYTES:-256}
BATCH=${BATCH:-500}
CONNECTIONS=${CONNECTIONS:-32}
MANY_CONNECTIONS=${MANY_CONNECTIONS:-64}
SHARDS=${SHARDS:-2}
SERVER_ARGS=${SERVER_ARGS:-}
PORT=${PORT:-4790}
LOAD_THREADS=${LOAD_THREADS:-1}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-1}
SPAN=${SPAN:-5000}
READ_CONNECTIONS=${READ_CONNECTIONS:-8}
SETTLE_MIN=${SETTLE_MIN:-35}
SETTLE_QUIET=${SETTLE_QUIET:-10}
SETTLE_SECS=${SETTLE_SECS:-120}
RECLAIM_SECS=${RECLAIM_SECS:-120}
RECLAIM_POLL=${RECLAIM_POLL:-5}
READY_TIMEOUT=${READY_TIMEOUT:-600}
DROP_CACHES=${DROP_CACHES:-0}
QUIET_WAIT=${QUIET_WAIT:-30}
SKIP_FILL=${SKIP_FILL:-0}
SKIP_MANY=${SKIP_MANY:-0}
KEEP=${KEEP:-0}
OUT_DIR=${OUT_DIR:-$ROOT/perf/results}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
URL="http://127.0.0.1:$PORT"

case "${1:-}" in
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1 {sub(/^# ?/, ""); print}' "$0"; exit 0 ;;
    "") ;;
    *) echo "storage.sh: no arguments (settings are environment variables; try --help)" >&2; exit 2 ;;
esac

# The command as given, with every setting that differs from its default.
settings=()
for v in RECORDS TOPICS MANY_TOPICS RECORD_BYTES BATCH CONNECTIONS MANY_CONNECTIONS SHARDS TOPICS_SERVER \
    SERVER_CPUS SERVER_ARGS PORT LOAD_THREADS DURATION WARMUP SPAN READ_CONNECTIONS SETTLE_MIN \
    SETTLE_QUIET SETTLE_SECS RECLAIM_SECS RECLAIM_POLL DROP_CACHES QUIET_WAIT SKIP_FILL SKIP_MANY; do
    if [ -n "$(printenv "$v" || true)" ]; then
        settings+=("$v=$(printf '%q' "${!v}")")
    fi
done
COMMAND="${settings[*]:+${settings[*]} }scripts/storage.sh"

log() { echo "storage.sh: $*" >&2; }
die() { log "$*"; exit 1; }

for n in RECORDS TOPICS MANY_TOPICS RECORD_BYTES BATCH SHARDS DURATION SPAN SETTLE_MIN \
    SETTLE_QUIET SETTLE_SECS RECLAIM_SECS RECLAIM_POLL READY_TIMEOUT; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a whole number, not '${!n}'"
done
[ "$TOPICS" -ge 3 ] || die "TOPICS must be at least 3"
[ "$RECORDS" -ge $((TOPICS * 4)) ] || die "RECORDS must be at least 4 per topic"
NPROC=$(nproc)
if [ -z "${SERVER_CPUS:-}" ]; then
    last=$((SHARDS < NPROC ? SHARDS - 1 : NPROC - 1))
    SERVER_CPUS=$( [ "$last" -gt 0 ] && echo "0-$last" || echo 0)
fi

# Tools: jq builds the figures and the table; curl talks to the server; taskset pins.
need_pkgs=()
command -v jq >/dev/null || need_pkgs+=(jq)
command -v curl >/dev/null || need_pkgs+=(curl)
command -v taskset >/dev/null || need_pkgs+=(util-linux)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${need_pkgs[*]}"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
if [ "$DROP_CACHES" = 1 ] && [ ! -w /proc/sys/vm/drop_caches ]; then
    die "DROP_CACHES=1 needs root (cannot write /proc/sys/vm/drop_caches)"
fi

if [ -n "${TOPICS_SERVER:-}" ]; then
    [ -x "$TOPICS_SERVER" ] || die "TOPICS_SERVER=$TOPICS_SERVER is not an executable"
    log "building the load generator (cargo build --release -p perf)"
    (cd "$ROOT" && cargo build --release -p perf --quiet)
else
    log "building release binaries (cargo build --release --workspace)"
    (cd "$ROOT" && cargo build --release --workspace --quiet)
fi
SERVER=${TOPICS_SERVER:-$TARGET_DIR/release/topics}
LOAD=$TARGET_DIR/release/topics-load

SCRATCH_PARENT=${SCRATCH:-${TMPDIR:-/tmp}}
SCRATCH_DIR=$(mktemp -d "$SCRATCH_PARENT/topics-storage-XXXX")
WORK=$SCRATCH_DIR/work
mkdir -p "$WORK"
RUNS=$WORK/runs.jsonl
FIGS=$WORK/figures.json
SERVER_LOG=$SCRATCH_DIR/server.log
: >"$RUNS"; echo '{}' >"$FIGS"; : >"$SERVER_LOG"
SERVER_PID=""
DATA_DIR=""

cleanup() {
    local rc=$?
    stop_server KILL >/dev/null 2>&1 || true
    if [ "$KEEP" = 1 ]; then
        log "kept $SCRATCH_DIR (server log: $SERVER_LOG)"
    else
        rm -rf "$SCRATCH_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { echo "$EPOCHREALTIME"; }
# elapsed T0 [T1]: seconds from T0 to T1 (default now), 3 decimals.
elapsed() { awk -v a="$1" -v b="${2:-$EPOCHREALTIME}" 'BEGIN {printf "%.3f", b - a}'; }

# fig KEY JSON: records one figure (KEY may be a path such as fill.rss_mib; empty is null).
fig() {
    local tmp=$WORK/figures.tmp
    jq --arg k "$1" --argjson v "${2:-null}" 'setpath($k | split("."); $v)' "$FIGS" >"$tmp"
    mv "$tmp" "$FIGS"
}
figs() { jq -r "$1" "$FIGS"; }


# wait_quiet PHASE: waits up to QUIET_WAIT seconds for the machine (beyond our idle server) to
# be less than 10% busy; records how busy it was when the phase started.
wait_quiet() {
    local phase=$1 deadline=$((SECONDS + QUIET_WAIT)) busy
    while :; do
        busy=$(cpu_busy_pct)
        if [ "$busy" -le 10 ] || [ "$SECONDS" -ge "$deadline" ]; then break; fi
        log "machine ${busy}% busy with other work; waiting (QUIET_WAIT=$QUIET_WAIT)"
        sleep 2
    done
    [ "$busy" -gt 10 ] && log "machine still ${busy}% busy; running $phase anyway"
    fig "busy_pct.$phase" "$busy"
}

drop_caches() {
    if [ "$DROP_CACHES" = 1 ]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
        log "dropped the page cache"
    fi
}

# alive PID: the process exists and is not a zombie (kill -0 succeeds on an unreaped one).
alive() {
    local state
    state=$(awk '{sub(/.*\) /, ""); print $1}' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ]
}

status_kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || true; }
rss_mib() { awk -v k="${1:-VmRSS}:" '$1 == k {printf "%.1f", $2 / 1024}' "/proc/$SERVER_PID/status" 2>/dev/null || true; }
du_bytes() { du -sb "$DATA_DIR" | cut -f1; }
du_alloc_bytes() { du -sk "$DATA_DIR" | awk '{printf "%.0f\n", $1 * 1024}'; }

# spawn_server: starts the server on DATA_DIR (no wait); SPAWNED is when.
spawn_server() {
    if curl -fs -o /dev/null --max-time 1 "$URL/v0/ready" 2>/dev/null; then
        die "something already answers on port $PORT; set PORT="
    fi
    echo "=== $(date -u +%FT%TZ) start: $SERVER_CMD" >>"$SERVER_LOG"
    SPAWNED=$(now)
    # shellcheck disable=SC2086 # SERVER_ARGS is a list of flags
    # --max-topics 0: the many-topics phase holds 1,000,000 topics (the default cap is 100,000).
    taskset -c "$SERVER_CPUS" "$SERVER" --port "$PORT" --data-dir "$DATA_DIR" --shards "$SHARDS" \
        --max-topics 0 $SERVER_ARGS >>"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
}

# wait_ready: polls /v0/ready every 10 ms; prints the seconds from spawn to its first 200.
# Run it as READY=$(wait_ready), so that a failure stops the script.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if curl -fs -o /dev/null --max-time 2 "$URL/v0/ready" 2>/dev/null; then
            elapsed "$SPAWNED"
            return 0
        fi
        if ! alive "$SERVER_PID"; then
            log "the server exited before it was ready; its log:"
            tail -n 30 "$SERVER_LOG" >&2
            exit 1
        fi
        sleep 0.01
    done
    log "the server was not ready within $READY_TIMEOUT s; its log:"
    tail -n 30 "$SERVER_LOG" >&2
    exit 1
}

# start_fresh NAME: a new data dir SCRATCH_DIR/NAME and a server on it, ready.
start_fresh() {
    DATA_DIR=$SCRATCH_DIR/$1
    mkdir -p "$DATA_DIR"
    SERVER_CMD="taskset -c $SERVER_CPUS topics --port $PORT --data-dir <scratch>/$1 --shards $SHARDS --max-topics 0${SERVER_ARGS:+ $SERVER_ARGS}"
    spawn_server
    local ready
    ready=$(wait_ready)
    log "server $SERVER_PID ready on $DATA_DIR in $ready s"
}

# stop_server SIGNAL: stops the server (waits up to 60 s, then KILL); STOPPED_S is the
# seconds it took to exit. Not in a subshell: only this shell can reap it.
stop_server() {
    local sig=${1:-TERM} t0 deadline
    [ -n "$SERVER_PID" ] || return 0
    t0=$(now)
    # (stderr closed meanwhile: bash would report a killed job as "Killed ...")
    {
        kill "-$sig" "$SERVER_PID" || true
        deadline=$((SECONDS + 60))
        while alive "$SERVER_PID" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.01; done
        STOPPED_S=$(elapsed "$t0")
        if alive "$SERVER_PID"; then
            echo "storage.sh: server $SERVER_PID still running 60 s after SIG$sig; killing it" >>"$SERVER_LOG"
            kill -KILL "$SERVER_PID" || true
        fi
        wait "$SERVER_PID" || true
    } 2>/dev/null
    echo "=== $(date -u +%FT%TZ) stopped with SIG$sig after $STOPPED_S s" >>"$SERVER_LOG"
    SERVER_PID=""
}

# load NAME ARGS...: one topics-load run against the server; its JSON kept (tagged NAME) and
# printed.
load() {
    local name=$1; shift
    local out
    log "$name: topics-load $*"
    if ! out=$("$LOAD" --url "$URL" --threads "$LOAD_THREADS" "$@" --json); then
        log "topics-load failed; server log tail:"
        tail -n 20 "$SERVER_LOG" >&2
        exit 1
    fi
    jq -c --arg phase "$name" --arg command "topics-load $*" '. + {phase: $phase, command: $command}' \
        <<<"$out" >>"$RUNS"
    jq -r '.runs[] | "storage.sh:   \(.name): \(.records_per_s) records/s, p50 \(.p50_us) µs, p99 \(.p99_us) µs, errors \(.errors)"' <<<"$out" >&2
    LAST=$out
}

# settle KEY: waits at least SETTLE_MIN s and until the server's RSS and the data dir's size
# have held still (each within 1 MiB or 0.5%) for SETTLE_QUIET s, at most SETTLE_SECS; records
# KEY.settle_s / settled and the figures then.
settle() {
    local key=$1 t0 rss du prev_rss="" prev_du="" still_since settled=false
    t0=$SECONDS; still_since=$SECONDS
    while :; do
        rss=$(status_kib VmRSS); du=$(du_bytes)
        if [ -z "$prev_rss" ] || ! awk -v a="$prev_rss" -v b="$rss" -v c="$prev_du" -v d="$du" 'BEGIN {
                da = a > b ? a - b : b - a; dd = c > d ? c - d : d - c;
                exit !(da <= (a * 0.005 > 1024 ? a * 0.005 : 1024) && dd <= (c * 0.005 > 1048576 ? c * 0.005 : 1048576)) }'; then
            still_since=$SECONDS
        fi
        prev_rss=$rss; prev_du=$du
        if [ $((SECONDS - t0)) -ge "$SETTLE_MIN" ] && [ $((SECONDS - still_since)) -ge "$SETTLE_QUIET" ]; then
            settled=true; break
        fi
        [ $((SECONDS - t0)) -ge "$SETTLE_SECS" ] && break
        sleep 2
    done
    fig "$key.settle_s" $((SECONDS - t0))
    fig "$key.settle_ok" "$settled"
    $settled || log "$key: RSS or disk use still moving after $SETTLE_SECS s; measuring anyway"
}

# disk KEY: the data dir's size now: apparent and allocated bytes, and where they are (files
# grouped by path with digit runs as #).
disk() {
    local key=$1
    fig "$key.du_bytes" "$(du_bytes)"
    fig "$key.du_alloc_bytes" "$(du_alloc_bytes)"
    fig "$key.files" "$(find "$DATA_DIR" -type f -printf '%s %b %P\n' | awk '
        {p = $3; gsub(/[0-9]+/, "#", p); n[p]++; s[p] += $1; a[p] += $2 * 512}
        END {for (p in n) printf "%s\t%d\t%d\t%d\n", p, n[p], s[p], a[p]}' |
        jq -R -s '[split("\n")[] | select(length > 0) | split("\t")
            | {path: .[0], files: (.[1] | tonumber), bytes: (.[2] | tonumber), alloc_bytes: (.[3] | tonumber)}]
            | sort_by(-.bytes)')"
}

# mem KEY: the server's VmRSS and VmHWM now, MiB.
mem() {
    fig "$1.rss_mib" "$(rss_mib VmRSS)"
    fig "$1.hwm_mib" "$(rss_mib VmHWM)"
}

# topic_json NAME: GET /v0/topics/NAME?touch=false.
topic_json() { curl -fsS --max-time 10 "$URL/v0/topics/$1?touch=false"; }

# sum_counts: {topics, records, bytes} summed over GET /v0/topics, every page.
sum_counts() {
    local cursor="" page acc='{"topics":0,"records":0,"bytes":0}'
    while :; do
        page=$(curl -fsS --max-time 30 "$URL/v0/topics?page_size=1000${cursor:+&cursor=$cursor}")
        acc=$(jq -c --argjson acc "$acc" '{topics: ($acc.topics + (.topics | length)),
            records: ($acc.records + ([.topics[].count] | add // 0)),
            bytes: ($acc.bytes + ([.topics[].bytes] | add // 0))}' <<<"$page")
        cursor=$(jq -r '.next_cursor // empty' <<<"$page")
        [ -n "$cursor" ] || break
        cursor=$(jq -rn --arg c "$cursor" '$c | @uri')
    done
    echo "$acc"
}

# check KEY: after a restart: the sampled topics' count against what the fill wrote (and
# head_seq not below it: after a kill -9 the head resumes above the seqs reserved durably
# ahead of it, a documented gap), and the counts summed over all topics.
check() {
    local key=$1 bad=0 gap=0 t want head count sums
    while read -r t want; do
        read -r head count < <(topic_json "$t" | jq -r '"\(.head_seq) \(.count)"' || echo "missing missing")
        if [ "$count" != "$want" ] || ! [ "$head" -ge "$want" ] 2>/dev/null; then
            log "$key: $t has head_seq $head and count $count, expected $want records"
            bad=$((bad + 1))
        elif [ "$head" -gt "$want" ]; then
            gap=$((head - want))
        fi
    done < <(jq -r '.sample[] | "\(.topic) \(.expected_head_seq)"' "$WORK/fill-sample.json")
    sums=$(sum_counts)
    fig "$key.sample_mismatches" "$bad"
    fig "$key.head_gap" "$gap"
    fig "$key.totals" "$sums"
    fig "$key.ok" "$(jq --argjson bad "$bad" --argjson n "$FILL_WRITTEN" --argjson t "$TOPICS" \
        '$bad == 0 and .records == $n and .topics == $t' <<<"$sums")"
}

# reclaim KEY TOPIC HOW: HOW is delete or evict. Empties TOPIC (evict: down to one record),
# then polls the data dir's allocated size every RECLAIM_POLL s for RECLAIM_SECS s; records when it had
# dropped by 80% of the topic's payload.
reclaim() {
    local key=$1 topic=$2 how=$3 info head bytes before t0 now_b freed="" at=null target resp
    info=$(topic_json "$topic")
    head=$(jq -r .head_seq <<<"$info"); bytes=$(jq -r .bytes <<<"$info")
    # Allocated bytes: the server gives dead segment space back by punching holes, which
    # frees the blocks without changing the files' apparent size.
    before=$(du_alloc_bytes)
    if [ "$how" = delete ]; then
        resp=$(curl -fsS --max-time 60 -X POST "$URL/v0/topics/$topic/delete" \
            -H 'content-type: application/json' -d "{\"before_seq\": $((head + 1))}")
    else
        resp=$(curl -fsS --max-time 60 -X PUT "$URL/v0/topics/$topic" \
            -H 'content-type: application/json' -d '{"cap_records": 1}')
    fi
    t0=$SECONDS
    local left
    left=$(topic_json "$topic" | jq -r .bytes)
    target=$(((bytes - left) * 8 / 10))
    log "$key: $how on $topic (head_seq $head, $bytes payload bytes, $left left after); data dir $before bytes"
    while :; do
        now_b=$(du_alloc_bytes)
        freed=$((before - now_b))
        if [ "$freed" -ge "$target" ]; then at=$((SECONDS - t0)); break; fi
        [ $((SECONDS - t0)) -ge "$RECLAIM_SECS" ] && break
        sleep "$RECLAIM_POLL"
    done
    fig "$key" "$(jq -n --arg topic "$topic" --arg how "$how" --argjson payload "$((bytes - left))" \
        --argjson before "$before" --argjson after "$now_b" --argjson at "$at" \
        --argjson waited "$((SECONDS - t0))" --argjson resp "$resp" '{topic: $topic, how: $how,
        payload_removed: $payload, du_before: $before, du_after: $after, freed: ($before - $after),
        reclaimed_s: $at, waited_s: $waited, limit_s: '"$RECLAIM_SECS"', response: ($resp | del(.performance))}')"
}

BUSY_BEFORE=$(cpu_busy_pct)
[ "$BUSY_BEFORE" -gt 10 ] && log "warning: the machine is ${BUSY_BEFORE}% busy before the run; figures will be skewed"
PAYLOAD=$((RECORDS * RECORD_BYTES))

if [ "$SKIP_FILL" != 1 ]; then
    # 1. Fill.
    start_fresh fill-data
    wait_quiet fill
    load fill --workload fill --topics "$TOPICS" --records "$RECORDS" --record-bytes "$RECORD_BYTES" \
        --batch "$BATCH" --connections "$CONNECTIONS" --server-pid "$SERVER_PID"
    jq '.runs[0] | {sample}' <<<"$LAST" >"$WORK/fill-sample.json"
    FILL_WRITTEN=$(jq '.runs[0].records_written' <<<"$LAST")
    fig fill.report "$(jq -c '.runs[0] | del(.sample)' <<<"$LAST")"
    [ "$(jq '.runs[0].verified' <<<"$LAST")" = true ] || log "fill: the sampled topics' heads differ from what was written"
    mem fill.after; disk fill.after

    # 2. Settled memory and disk.
    settle fill
    mem fill.settled; disk fill.settled

    # 3. Reads at both ends.
    drop_caches
    wait_quiet read
    load read --workload diff-range --topics "$TOPICS" --limit 1000 --span "$SPAN" \
        --connections "$READ_CONNECTIONS" --duration-secs "$DURATION" --warmup-secs "$WARMUP"
    fig read "$(jq -c '{span: .params.span, oldest: (.runs[] | select(.end == "oldest")),
        head: (.runs[] | select(.end == "head"))}' <<<"$LAST")"

    # 4. Restarts: kill -9, then SIGTERM.
    stop_server KILL
    drop_caches
    spawn_server
    READY=$(wait_ready)
    fig restart_kill.ready_s "$READY"
    mem restart_kill
    check restart_kill
    stop_server TERM
    fig restart_term.stop_s "$STOPPED_S"
    drop_caches
    spawn_server
    READY=$(wait_ready)
    fig restart_term.ready_s "$READY"
    mem restart_term
    check restart_term
    log "restart: kill -9 ready in $(figs .restart_kill.ready_s) s; SIGTERM stop $STOPPED_S s, ready in $READY s"

    # 5. Reclaim: the last topic deleted, the one before it evicted down to one record.
    reclaim reclaim_delete "$(jq -r '.sample[-1].topic' "$WORK/fill-sample.json")" delete
    LAST_NAME=$(jq -r '.sample[-1].topic' "$WORK/fill-sample.json")
    DIGITS=${LAST_NAME##*-t}
    EVICT_TOPIC=$(printf '%s-t%0*d' "${LAST_NAME%-t*}" "${#DIGITS}" $((TOPICS - 2)))
    reclaim reclaim_evict "$EVICT_TOPIC" evict
    log "reclaim: $(figs '[.reclaim_delete, .reclaim_evict][] | "\(.how) \(if .reclaimed_s then "in \(.reclaimed_s) s" else "not within \(.limit_s) s" end)"' | paste -sd ';' | sed 's/;/; /')"
    stop_server TERM
    [ "$KEEP" = 1 ] || rm -rf "$DATA_DIR"
fi

if [ "$SKIP_MANY" != 1 ]; then
    # 6. Many topics on a fresh server.
    start_fresh many-data
    wait_quiet many
    load many --workload fill --topic-prefix many --topics "$MANY_TOPICS" \
        --records $((MANY_TOPICS * MANY_PER_TOPIC)) --record-bytes "$RECORD_BYTES" \
        --batch "$MANY_PER_TOPIC" --connections "$MANY_CONNECTIONS" --server-pid "$SERVER_PID"
    fig many.report "$(jq -c '.runs[0] | del(.sample)' <<<"$LAST")"
    mem many.after
    settle many
    mem many.settled; disk many.settled
    stop_server TERM
    [ "$KEEP" = 1 ] || rm -rf "$DATA_DIR"
fi

# Server log: anything above INFO.
fig server_log "$(grep -E '(ERROR|WARN|panicked)' "$SERVER_LOG" | head -n 20 | jq -R -s 'split("\n") | map(select(length > 0))')"
fig server_log_problem_lines "$(grep -cE '(ERROR|WARN|panicked)' "$SERVER_LOG" || true)"

# Machine, commit, and the document.
MODEL=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ -n "${TOPICS_SERVER:-}" ]; then
    COMMIT="load generator at $COMMIT; server binary $TOPICS_SERVER (prebuilt${TOPICS_SERVER_COMMIT:+ from commit $TOPICS_SERVER_COMMIT})"
elif [ -n "$(git -C "$ROOT" status --porcelain -- src shards Cargo.toml Cargo.lock 2>/dev/null)" ]; then
    COMMIT="$COMMIT (server with uncommitted changes)"
fi
mkdir -p "$OUT_DIR"
jq -s --slurpfile figs "$FIGS" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg nproc "$NPROC" \
    --arg model "$MODEL" --arg kernel "$(uname -sr)" --arg commit "$COMMIT" --arg command "$COMMAND" \
    --arg server "taskset -c $SERVER_CPUS topics --shards $SHARDS --max-topics 0${SERVER_ARGS:+ $SERVER_ARGS}" \
    --arg scratch "$SCRATCH_PARENT" --arg fs "$(df -T "$SCRATCH_PARENT" | awk 'NR == 2 {print $2 " on " $1}')" --arg busy "$BUSY_BEFORE" --arg busy_after "$(cpu_busy_pct)" '{
        date: $date,
        machine: {nproc: ($nproc | tonumber), cpu: $model, kernel: $kernel,
                  busy_pct_before: ($busy | tonumber), busy_pct_after: ($busy_after | tonumber)},
        commit: $commit, command: $command, server: $server, scratch: $scratch, filesystem: $fs,
        settings: {records: '"$RECORDS"', topics: '"$TOPICS"', many_topics: '"$MANY_TOPICS"',
            record_bytes: '"$RECORD_BYTES"', payload_bytes: '"$PAYLOAD"', batch: '"$BATCH"',
            connections: '"$CONNECTIONS"', many_connections: '"$MANY_CONNECTIONS"', shards: '"$SHARDS"',
            load_threads: '"$LOAD_THREADS"', read_duration_s: '"$DURATION"', span: '"$SPAN"',
            read_connections: '"$READ_CONNECTIONS"', settle_min_s: '"$SETTLE_MIN"',
            settle_quiet_s: '"$SETTLE_QUIET"', reclaim_s: '"$RECLAIM_SECS"', reclaim_poll_s: '"$RECLAIM_POLL"',
            drop_caches: ('"$DROP_CACHES"' == 1), skip_fill: ('"$SKIP_FILL"' == 1),
            skip_many: ('"$SKIP_MANY"' == 1)},
        figures: $figs[0],
        reports: .
    }' "$RUNS" >"$OUT_DIR/storage-latest.json"

# shellcheck disable=SC2016 # jq variables, not shell ones
TABLE_JQ='
def commas: (floor | tostring | explode | reverse) as $d
    | [range(0; $d | length; 3) as $i | $d[$i:$i + 3] | reverse | implode] | reverse | join(",");
def num: if . == null then "?" else commas end;
def r($n): if . == null then "?" else (. * pow(10; $n) | round) / pow(10; $n) | tostring end;
def mib: if . == null then "?" else (. / 1048576 | r(1)) + " MiB" end;
def mark(ok): if ok then "✅" else "❌" end;
def lat: if . == null then "—" elif . < 1000 then "\(.) µs" else "\((. / 10 | round) / 100) ms" end;
.settings as $s | .figures as $f
| ($s.records == 20000000 and $s.topics == 1000 and $s.record_bytes == 256) as $full
| ($s.many_topics == 1000000) as $many_full
| ($s.payload_bytes) as $payload
| def row(a; b; c; d): "| \(a) | \(b) | \(c) | \(d) |";
"## topics storage (issue 4) — \(.date)",
"",
"- machine: \(.machine.nproc) × \(.machine.cpu), \(.machine.kernel); CPUs \(.machine.busy_pct_before)% busy with other work just before the run, \(.machine.busy_pct_after)% just after" + ($f.busy_pct // {} | to_entries | if length > 0 then "; at the start of each phase: " + (map("\(.key) \(.value)%") | join(", ")) else "" end),
"- commit: \(.commit)",
"- command: `\(.command)`",
"- server: `\(.server)`, load generator `topics-load --threads \($s.load_threads)` unpinned; fresh data dirs under `\(.scratch)` (\(.filesystem))" + (if $s.drop_caches then "; page cache dropped before the reads and each restart" else "; page cache not dropped" end),
"- payload: the `data` of each record is a JSON string of exactly \($s.record_bytes) bytes (random base64url characters; 6 bits of entropy a byte), counted as the payload",
(if $full and ($many_full or $s.skip_many) then "- full scale: ✅/❌ check the targets of issue 4"
 else "- **reduced scale**: the targets of issue 4 are set for 20,000,000 × 256 B over 1,000 topics and 1,000,000 topics; ✅/❌ here are indicative only" end),
"",
"| measurement | figure | issue 4 target | |",
"|---|---|---|---|",
(if $s.skip_fill then empty else
  ($f.fill.report) as $fr
  | row("fill: \($s.records | commas) records × \($s.record_bytes) B into \($s.topics | commas) `disk` topics, \($s.batch) records/POST, \($s.connections) conns";
        "**\($fr.records_per_s | num)** records/s (\($fr.payload_mib_per_s) MiB/s of payload, \($fr.requests_per_s | num) req/s) over \($fr.elapsed_s | r(1)) s; p50 \($fr.p50_us | lat), p99 \($fr.p99_us | lat); errors \($fr.errors), lost \($fr.lost_records), sampled heads " + (if $fr.verified then "match" else "**differ**" end);
        "—"; ""),
    row("server RSS right after the fill"; "\($f.fill.after.rss_mib) MiB (peak VmHWM \($f.fill.after.hwm_mib) MiB)"; "—"; ""),
    row("server RSS settled (\($f.fill.settle_s) s after the fill\(if $f.fill.settle_ok then "" else ", still moving" end))";
        "**\($f.fill.settled.rss_mib) MiB** (peak VmHWM \($f.fill.settled.hwm_mib) MiB)"; "< 512 MiB";
        mark(($f.fill.settled.rss_mib | tonumber) < 512 and ($f.fill.settled.hwm_mib | tonumber) < 512)),
    row("disk right after the fill"; "\($f.fill.after.du_bytes | mib) apparent, \($f.fill.after.du_alloc_bytes | mib) allocated: \($f.fill.after.du_bytes / $payload | r(2))× / \($f.fill.after.du_alloc_bytes / $payload | r(2))× the payload (\($payload | mib))"; "—"; ""),
    row("disk settled"; "**\($f.fill.settled.du_alloc_bytes / $payload | r(2))×** the payload allocated (\($f.fill.settled.du_alloc_bytes | mib)), \($f.fill.settled.du_bytes / $payload | r(2))× apparent (\($f.fill.settled.du_bytes | mib), punched holes included); files: " + ($f.fill.settled.files | map("`\(.path)` \(.files)× \(.bytes | mib)") | .[:6] | join(", "));
        "≤ 1.3×"; mark($f.fill.settled.du_alloc_bytes <= 1.3 * $payload)),
    row("diff `limit 1000`, oldest \($f.read.span | commas) records of each topic, \($f.read.oldest.requests_per_s | num) req/s from \($s.read_connections) conns"; "**\($f.read.oldest.records_per_s | num)** records/s, p50 \($f.read.oldest.p50_us | lat), p99 \($f.read.oldest.p99_us | lat), errors \($f.read.oldest.errors)"; "—"; ""),
    row("diff `limit 1000`, newest \($f.read.span | commas) records of each topic"; "**\($f.read.head.records_per_s | num)** records/s, p50 \($f.read.head.p50_us | lat), p99 \($f.read.head.p99_us | lat), errors \($f.read.head.errors)"; "—"; ""),
    ($f.read.oldest.errors + $f.read.head.errors) as $read_errors
    | row("oldest / head read rate"; "**\($f.read.head.oldest_over_head // null | r(2))**" + (if $read_errors > 0 then " (**\($read_errors) failed reads**: " + ([$f.read.oldest, $f.read.head | select(.errors > 0) | "\(.non_2xx | tojson), first \(.first_error)"] | join("; ")) + ")" else "" end); "≥ 0.5"; mark(($f.read.head.oldest_over_head // 0) >= 0.5 and $read_errors == 0)),
    row("restart after `kill -9`: spawn → `/v0/ready` 200"; "**\($f.restart_kill.ready_s) s**; RSS then \($f.restart_kill.rss_mib) MiB; \($f.restart_kill.totals.records | num) records in \($f.restart_kill.totals.topics | num) topics " + (if $f.restart_kill.ok then "(all there" + (if $f.restart_kill.head_gap > 0 then "; head_seq resumed \($f.restart_kill.head_gap) above the last record, the documented seq-reservation gap" else "" end) + ")" else "(**expected \($s.records | commas) in \($s.topics | commas)**, \($f.restart_kill.sample_mismatches) sampled topics differ)" end); "< 3 s"; mark(($f.restart_kill.ready_s | tonumber) < 3 and $f.restart_kill.ok)),
    row("restart after SIGTERM (stop took \($f.restart_term.stop_s) s)"; "**\($f.restart_term.ready_s) s**; RSS then \($f.restart_term.rss_mib) MiB; " + (if $f.restart_term.ok then "all records there" else "**records missing**" end); "< 3 s"; mark(($f.restart_term.ready_s | tonumber) < 3 and $f.restart_term.ok)),
    ($f.reclaim_delete, $f.reclaim_evict | select(.) |
      row("disk given back after \(if .how == "delete" then "deleting all \(.response.deleted | num) records of" else "`cap_records: 1` evicting all but one record of" end) `\(.topic)` (\(.payload_removed | mib) payload)";
          (if .reclaimed_s != null then "**\(.reclaimed_s) s** (polled every \($s.reclaim_poll_s) s)" else "**not within \(.limit_s) s**" end) + "; data dir \(.du_before | mib) → \(.du_after | mib) (\(.freed | mib) freed)";
          "≤ 60 s"; mark(.reclaimed_s != null and .reclaimed_s <= 60)))
end),
(if $s.skip_many then empty else
  ($f.many.report) as $mr
  | row("many topics: \($s.many_topics | commas) topics × 10 records (each created by its first write), \($s.many_connections) conns";
        "\($mr.requests_per_s | num) topics/s (\($mr.records_per_s | num) records/s) over \($mr.elapsed_s | r(1)) s; \($mr.created | num) created; errors \($mr.errors), lost \($mr.lost_records)"; "—"; ""),
    row("many topics: server RSS settled (\($f.many.settle_s) s after)"; "**\($f.many.settled.rss_mib) MiB** (RSS ÷ topics: \((($f.many.settled.rss_mib | tonumber) * 1048576 / $s.many_topics) | commas) B; peak VmHWM \($f.many.settled.hwm_mib) MiB); disk \($f.many.settled.du_bytes | mib)"; "< 2 GiB";
        mark(($f.many.settled.rss_mib | tonumber) < 2048))
end),
row("server log: ERROR/WARN/panic lines"; "\($f.server_log_problem_lines)" + (if ($f.server_log | length) > 0 then ": `\($f.server_log[0])`" else "" end); "—"; "")
'
jq -r "$TABLE_JQ" "$OUT_DIR/storage-latest.json" >"$OUT_DIR/storage-latest.md"
cat "$OUT_DIR/storage-latest.md"
log "wrote $OUT_DIR/storage-latest.md and $OUT_DIR/storage-latest.json"
