#!/usr/bin/env bash
# Mirrors topics between two topics servers, both ways, without echo (SPEC §8 node
# loop-prevention). Each side has a node id. A record read from side A is written to side B
# with `node` = A's id; the copy back from B to A reads B with `node` = A's id, so records
# that came from A are skipped (silently, the cursor still advances) and never echo back.
#
#   scripts/mirror.sh --a URL --b URL --node-a ID --node-b ID --state DIR \
#                     (--topics t1,t2,... | --prefix P) [--interval-ms 100] [--limit 500] [--once]
#
#   --a / --b          base URLs of the two servers (e.g. http://127.0.0.1:4000)
#   --node-a / -b      node ids of the two sides (byte-exact, different, ≤ 128 bytes)
#   --state DIR        where the cursors live (one file per direction and topic); keep it
#                      between runs: a restarted mirror resumes where it stopped
#   --topics LIST      comma-separated topic names to mirror
#   --prefix P         instead of --topics: every topic whose name starts with P, on either
#                      side (re-listed on every pass, so new topics are picked up)
#   --interval-ms N    pause between passes that found nothing to copy (default 100)
#   --limit N          records per diff / write (default 500, at most 1000)
#   --once             exit after the first pass that found nothing to copy
#
# Guarantees: each record is copied once, also across a kill of the mirror at any point:
# before a write the mirror records the batch (cursor range and idempotency key) in
# DIR/<dir>/<topic>.pending, and a restarted mirror repeats exactly that write with the same
# idempotency key, which the server dedupes (within the topic's idempotency_window_ms,
# 120 s by default). Copies keep `data`, `tag` and `meta`; their `node` is the source side's
# id (an original `$node` is not carried over). Records written on a side with the other
# side's node id are treated as copies and not mirrored. Topics with `dedupe_node: false`
# would echo: don't mirror them. jq re-serialises `data`/`meta` (e.g. 1.50 becomes 1.5;
# with jq 1.6 integers beyond 2^53 lose precision). Needs bash, curl and jq (installed with
# apt-get when missing).
set -uo pipefail

A="" B="" NODE_A="" NODE_B="" STATE="" TOPICS="" PREFIX="" PREFIX_SET=0 INTERVAL_MS=100 LIMIT=500 ONCE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --a) A=${2:?}; shift 2 ;;
        --b) B=${2:?}; shift 2 ;;
        --node-a) NODE_A=${2:?}; shift 2 ;;
        --node-b) NODE_B=${2:?}; shift 2 ;;
        --state) STATE=${2:?}; shift 2 ;;
        --topics) TOPICS=${2:?}; shift 2 ;;
        --prefix) PREFIX=${2?}; PREFIX_SET=1; shift 2 ;;
        --interval-ms) INTERVAL_MS=${2:?}; shift 2 ;;
        --limit) LIMIT=${2:?}; shift 2 ;;
        --once) ONCE=1; shift ;;
        -h|--help) sed -n '2,33p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "mirror.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
if [ -z "$A" ] || [ -z "$B" ] || [ -z "$NODE_A" ] || [ -z "$NODE_B" ] || [ -z "$STATE" ]; then
    echo "mirror.sh: --a, --b, --node-a, --node-b and --state are required" >&2
    exit 2
fi
if [ "$NODE_A" = "$NODE_B" ]; then
    echo "mirror.sh: the two node ids must differ" >&2
    exit 2
fi
if [ -z "$TOPICS" ] && [ "$PREFIX_SET" = 0 ]; then
    echo "mirror.sh: give --topics or --prefix" >&2
    exit 2
fi

log() { echo "mirror.sh: $*" >&2; }

if ! command -v jq >/dev/null || ! command -v curl >/dev/null; then
    pkgs=()
    command -v jq >/dev/null || pkgs+=(jq)
    command -v curl >/dev/null || pkgs+=(curl)
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    log "installing ${pkgs[*]}"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null; }; then
        log "cannot install ${pkgs[*]}"
        exit 1
    fi
fi

A=${A%/}
B=${B%/}
mkdir -p "$STATE/a-to-b" "$STATE/b-to-a" || exit 1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# Writes a file atomically (temp file + rename in the same directory).
put_file() {
    local path=$1 text=$2
    printf '%s\n' "$text" >"$path.tmp" && mv -f "$path.tmp" "$path"
}

# POST JSON from stdin; prints the HTTP status, body to file $2.
post() {
    local url=$1 out=$2
    curl -sS -o "$out" -w '%{http_code}' --max-time 30 -X POST \
        -H 'content-type: application/json' --data-binary @- "$url" 2>"$TMP/curl.err" || echo 000
}

# The topic names to mirror.
topic_list() {
    if [ -n "$TOPICS" ]; then
        tr ',' '\n' <<<"$TOPICS" | sed '/^$/d'
        return
    fi
    local url cursor code q
    for url in "$A" "$B"; do
        cursor=""
        while :; do
            q="prefix=$(jq -rn --arg p "$PREFIX" '$p|@uri')&page_size=1000"
            [ -n "$cursor" ] && q="$q&cursor=$(jq -rn --arg c "$cursor" '$c|@uri')"
            code=$(curl -sS -o "$TMP/list.json" -w '%{http_code}' --max-time 30 "$url/v0/topics?$q" 2>/dev/null) || code=000
            [ "$code" = 200 ] || break
            jq -r '.topics[].topic' "$TMP/list.json"
            cursor=$(jq -r '.next_cursor // empty' "$TMP/list.json")
            [ -n "$cursor" ] || break
        done
    done | sort -u
}

# copy SRC_URL SRC_NODE DST_URL DST_NODE DIR TOPIC: one batch from SRC to DST.
# Prints "moved" when it copied or advanced, "idle" when caught up, "error" otherwise.
copy_batch() {
    local src=$1 src_node=$2 dst=$3 dst_node=$4 dir=$5 topic=$6
    local cur_file="$STATE/$dir/$topic.cursor" pend_file="$STATE/$dir/$topic.pending"
    local from=0 to="" key="" code next n
    if [ -f "$pend_file" ]; then
        read -r from to key <"$pend_file"
    elif [ -f "$cur_file" ]; then
        read -r from <"$cur_file"
    fi
    code=$(jq -cn --argjson f "$from" --argjson l "$LIMIT" --arg n "$dst_node" \
        '{from_seq: $f, limit: $l, node: $n, include_tags: true, include_meta: true}' |
        post "$src/v0/topics/$topic/diff" "$TMP/diff.json")
    case "$code" in
        200) ;;
        404) echo idle; return ;;
        *) log "diff $src $topic from $from: HTTP $code $(cat "$TMP/curl.err" "$TMP/diff.json" 2>/dev/null | head -c 300)"
           echo error; return ;;
    esac
    if [ -z "$to" ]; then
        next=$(jq -r '.next_from_seq' "$TMP/diff.json")
        if jq -e '.tombstone != null' "$TMP/diff.json" >/dev/null; then
            log "$topic on $src: tombstone $(jq -c '.tombstone' "$TMP/diff.json")"
        fi
        n=$(jq '.records | length' "$TMP/diff.json")
        if [ "$n" = 0 ]; then
            if [ "$next" != "$from" ]; then
                put_file "$cur_file" "$next"
                echo moved
            else
                echo idle
            fi
            return
        fi
        to=$next
        key="mirror:$src_node:$topic:$from:$to:$(jq -r '.records[0]["$seq"]|tostring' "$TMP/diff.json"):$(jq -r '.records[0]["$ts"]|tostring' "$TMP/diff.json")"
        put_file "$pend_file" "$from $to $key"
    fi
    n=$(jq --argjson t "$to" '[.records[] | select(.["$seq"] <= $t)] | length' "$TMP/diff.json")
    if [ "$n" != 0 ]; then
        code=$(jq -c --argjson t "$to" --arg node "$src_node" --arg key "$key" '
            {node: $node, idempotency_key: $key,
             records: [.records[] | select(.["$seq"] <= $t)
                       | {data}
                         + (if has("$tag") then {tag: .["$tag"]} else {} end)
                         + (if has("meta") then {meta} else {} end)]}' "$TMP/diff.json" |
            post "$dst/v0/topics/$topic" "$TMP/write.json")
        case "$code" in
            200|201) ;;
            *) log "write $dst $topic ($from..$to]: HTTP $code $(cat "$TMP/curl.err" "$TMP/write.json" 2>/dev/null | head -c 300)"
               echo error; return ;;
        esac
    fi
    put_file "$cur_file" "$to"
    rm -f "$pend_file"
    echo moved
}

log "mirroring $A ($NODE_A) <-> $B ($NODE_B), state in $STATE"
while :; do
    moved=0
    errors=0
    while IFS= read -r topic; do
        [ -n "$topic" ] || continue
        for dirn in a-to-b b-to-a; do
            if [ "$dirn" = a-to-b ]; then
                r=$(copy_batch "$A" "$NODE_A" "$B" "$NODE_B" a-to-b "$topic")
            else
                r=$(copy_batch "$B" "$NODE_B" "$A" "$NODE_A" b-to-a "$topic")
            fi
            case "$r" in
                moved) moved=1 ;;
                error) errors=1 ;;
            esac
        done
    done < <(topic_list)
    if [ "$moved" = 0 ]; then
        if [ "$ONCE" = 1 ] && [ "$errors" = 0 ]; then
            exit 0
        fi
        sleep "$(awk -v ms="$INTERVAL_MS" 'BEGIN { printf "%.3f", ms / 1000 }')"
    fi
done
