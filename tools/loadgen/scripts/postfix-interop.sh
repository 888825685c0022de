#!/usr/bin/env bash
# Postfix interop and overhead check for millrace-load (issue 6).
#
#  1. `millrace-load send` into Postfix's smtp-sink: counts match.
#  2. Postfix's smtp-source into `millrace-load sink`: counts match.
#  3. Overhead: `send` into `sink` (1 KiB, 50 sessions, 20,000 messages)
#     against `smtp-source -s 50 -m 20000 -l 1024` into smtp-sink, in the
#     same run. Target: ours >= 3x. `smtp-source -d` (connection reuse) is
#     shown too, for reference.
#
# Installs the Debian package `postfix` when smtp-sink/smtp-source are
# missing (needs root) and stops the Postfix master it may start.
# Everything runs on 127.0.0.1. Exits non-zero when a count differs or
# the overhead target is missed.
set -euo pipefail

cd "$(dirname "$0")/../../.."
export PATH="$PATH:/usr/sbin:/usr/local/sbin"
MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-50}
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
    echo "postfix-interop: FAIL: $*" >&2
    exit 1
}

if ! command -v smtp-sink >/dev/null || ! command -v smtp-source >/dev/null
then
    echo "postfix-interop: installing postfix (smtp-sink, smtp-source)"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix
    # The package may start the mail system; we only need the tools.
    postfix stop 2>/dev/null || true
fi

cargo build --release -q -p millrace-load
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BIN="$TARGET_DIR/release/millrace-load"

SINK_USER=()
if [ "$(id -u)" = 0 ]; then
    SINK_USER=(-u nobody)
fi

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    fail "nothing listens on port $1"
}

# json FILE KEY: a top-level number from a JSON report.
json() {
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

# start_smtp_sink PORT OUT: runs smtp-sink with counters (-c) into OUT.
start_smtp_sink() {
    smtp-sink "${SINK_USER[@]}" -c "127.0.0.1:$1" 1024 >"$2" 2>&1 &
    PIDS+=($!)
    wait_port "$1"
}

# stop_last: stops the most recently started background process.
stop_last() {
    local pid=${PIDS[-1]}
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset 'PIDS[-1]'
}

# smtp_sink_messages OUT: the last "mesg=N" counter smtp-sink printed.
smtp_sink_messages() {
    tr '\r' '\n' <"$1" | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2
}

# start_sink EXPECT JSON: our sink on a free port; sets SINK_ADDR.
start_sink() {
    "$BIN" sink --listen 127.0.0.1:0 --expect "$1" --json \
        >"$2" 2>"$2.err" &
    PIDS+=($!)
    for _ in $(seq 1 200); do
        SINK_ADDR=$(grep -o 'listening on .*' "$2.err" | cut -d' ' -f3 || true)
        [ -n "$SINK_ADDR" ] && return 0
        sleep 0.05
    done
    fail "millrace-load sink did not start"
}

now() { date +%s.%N; }
rate() { python3 -c "import sys; print(f'{$1 / ($3 - $2):.0f}')"; }

echo "== 1. millrace-load send -> smtp-sink"
port=$(free_port)
start_smtp_sink "$port" "$WORK/smtp-sink.out"
"$BIN" send --server "127.0.0.1:$port" --messages 2000 --sessions 20 \
    --recipients 2 --messages-per-session 100 --json >"$WORK/send1.json"
stop_last
sent=$(json "$WORK/send1.json" messages_accepted)
got=$(smtp_sink_messages "$WORK/smtp-sink.out")
echo "send accepted $sent; smtp-sink counted $got"
[ "$sent" = 2000 ] && [ "$got" = 2000 ] || fail "counts differ"

echo "== 2. smtp-source -> millrace-load sink"
start_sink 2000 "$WORK/sink2.json"
smtp-source -s 20 -m 2000 -l 1024 "$SINK_ADDR"
wait "${PIDS[-1]}"
unset 'PIDS[-1]'
got=$(json "$WORK/sink2.json" messages)
echo "smtp-source sent 2000; sink counted $got"
[ "$got" = 2000 ] || fail "counts differ"

echo "== 3. overhead: $MESSAGES messages of 1 KiB, $SESSIONS sessions"
start_sink "$MESSAGES" "$WORK/sink3.json"
"$BIN" send --server "$SINK_ADDR" --messages "$MESSAGES" \
    --sessions "$SESSIONS" --size 1024 --json >"$WORK/send3.json"
wait "${PIDS[-1]}"
unset 'PIDS[-1]'
[ "$(json "$WORK/sink3.json" messages)" = "$MESSAGES" ] \
    || fail "sink counted $(json "$WORK/sink3.json" messages)"
ours=$(json "$WORK/send3.json" messages_per_sec)
ours=${ours%.*}

port=$(free_port)
start_smtp_sink "$port" "$WORK/smtp-sink3.out"
t0=$(now)
smtp-source -s "$SESSIONS" -m "$MESSAGES" -l 1024 "127.0.0.1:$port"
t1=$(now)
smtp-source -d -s "$SESSIONS" -m "$MESSAGES" -l 1024 "127.0.0.1:$port"
t2=$(now)
stop_last
theirs=$(rate "$MESSAGES" "$t0" "$t1")
theirs_d=$(rate "$MESSAGES" "$t1" "$t2")
ratio=$(python3 -c "print(f'{$ours / $theirs:.1f}')")
echo "millrace-load send -> sink:               $ours msg/s"
echo "smtp-source -s $SESSIONS -m $MESSAGES -l 1024 -> smtp-sink: $theirs msg/s"
echo "smtp-source -d (same, connection reuse):   $theirs_d msg/s"
echo "ratio: ${ratio}x (target >= 3x)"
python3 -c "import sys; sys.exit(0 if $ours >= 3 * $theirs else 1)" \
    || fail "overhead target missed"
echo "postfix-interop: OK"
