#!/usr/bin/env bash
# Postfix vs Millrace as the same relay, same sink, same injection, same run.
#
#   benches/scripts/postfix-compare.sh [MESSAGES]
#
# Installs Postfix if missing (Debian), configures the system instance as a
# relay from 127.0.0.1:25 to a millrace-load sink on loopback (main.cf is
# restored afterwards), injects MESSAGES (default 10000) 1 KiB messages over
# 20 sessions with millrace-load send, and measures end-to-end msg/s and the
# CPU time of all Postfix processes; then runs `millrace-load bench` with the
# same parameters. Not part of CI. Needs root.
set -euo pipefail
N=${1:-10000}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
cargo build --release -q -p millrace -p millrace-load
LOAD=$ROOT/target/release/millrace-load

if ! command -v postfix >/dev/null; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix
fi
postfix stop >/dev/null 2>&1 || true

SINKPORT=26300
CONF=/etc/postfix/main.cf
cp "$CONF" /tmp/main.cf.millrace-backup
restore() {
    postfix stop >/dev/null 2>&1 || true
    cp /tmp/main.cf.millrace-backup "$CONF"
    [ -n "${SINK:-}" ] && kill "$SINK" 2>/dev/null || true
}
trap restore EXIT
postconf -e "relayhost = [127.0.0.1]:$SINKPORT" \
    "inet_interfaces = loopback-only" "inet_protocols = ipv4" \
    "mydestination =" "mynetworks = 127.0.0.0/8" \
    "smtp_tls_security_level = none" "smtpd_tls_security_level = none" \
    "smtpd_relay_restrictions = permit_mynetworks reject"
postsuper -d ALL >/dev/null 2>&1 || true

# CPU ticks of every Postfix process (exited children are in the master's
# cutime/cstime).
pf_ticks() {
    local total=0 pid f
    for pid in $(pgrep -f '/usr/lib/postfix/sbin/' || true); do
        f=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || continue
        set -- $f
        total=$((total + ${12} + ${13} + ${14} + ${15}))
    done
    echo $total
}

"$LOAD" sink --listen 127.0.0.1:$SINKPORT --expect "$N" > /tmp/pf-sink.out 2>&1 &
SINK=$!
postfix start >/dev/null 2>&1
sleep 2
T0=$(pf_ticks)
S0=$(date +%s.%N)
"$LOAD" send --server 127.0.0.1:25 --sessions 20 --messages "$N" --size 1024 \
    --to 'user{n}@example.net' > /tmp/pf-send.out 2>&1
wait "$SINK"
SINK=
S1=$(date +%s.%N)
T1=$(pf_ticks)
HZ=$(getconf CLK_TCK)
echo "== Postfix $(postconf -h mail_version) as the relay =="
grep -E "messages accepted|dot-to-250" /tmp/pf-send.out
grep -E "first connection to last" /tmp/pf-sink.out
python3 -c "
n=$N; t=$S1-$S0; cpu=($T1-$T0)/$HZ
print(f'end to end: {n/t:.0f} msg/s (inject start to last sink arrival); Postfix CPU {cpu:.2f} s = {cpu*1000/n:.3f} ms/msg')"
postfix stop >/dev/null 2>&1 || true

echo
echo "== Millrace as the relay =="
"$LOAD" bench --messages "$N" --sessions 20 --size 1024
