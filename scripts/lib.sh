# shellcheck shell=bash
# Helpers shared by the benchmark scripts (load.sh, live.sh, queue.sh, storage.sh,
# ds-load.sh). Sourced, not run. wait_quiet expects the caller's `log` function and
# QUIET_WAIT.

# cpu_busy_pct: percent of all CPU time spent busy (not idle or iowait) over one second.
cpu_busy_pct() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8}' /proc/stat)
    echo "$a $b" | awk '{d = $4 - $2; printf "%.0f", (d > 0 ? 100 * ($3 - $1) / d : 0)}'
}

# wait_quiet: wait up to QUIET_WAIT seconds for other work to stop (< 10% busy), then run.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) busy
    while :; do
        busy=$(cpu_busy_pct)
        [ "$busy" -le 10 ] && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "machine still ${busy}% busy with other work; running anyway"
            return 0
        fi
        log "machine ${busy}% busy with other work; waiting (QUIET_WAIT=$QUIET_WAIT)"
        sleep 2
    done
}

# busy_ticks: busy CPU ticks of the whole machine so far (/proc/stat).
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
