#!/usr/bin/env bash
# slowhttptest's slow-body mode (Debian's package) against turbo: 500
# connections that send a 200 KB body in small pieces, while a plain GET is
# timed every 0.5 s; then whether the worker survived (its pid).
#   bench/slowhttptest.sh .venv-bench/bin/turbo 18811
set -u
cd "$(dirname "$0")/.."
BIN=$(realpath "$1"); PORT=$2; LOG=$(mktemp)
command -v slowhttptest >/dev/null || { apt-get update -qq && apt-get install -y -qq slowhttptest; }
cd tests/apps
VIRTUAL_ENV=$(realpath ../../.venv-3.13) "$BIN" hostile:wsgi --bind 127.0.0.1:$PORT --cores 2 > "$LOG" 2>&1 &
SRV=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/pid && break; sleep 0.1; done
P0=$(curl -s http://127.0.0.1:$PORT/pid | cut -d' ' -f1)
slowhttptest -c 500 -B -i 3 -r 200 -s 200000 -t POST -u http://127.0.0.1:$PORT/upload -x 10 -p 3 -l 40 \
  > "$LOG.slow" 2>&1 &
ST=$!
worst=0; fails=0
for _ in $(seq 70); do
  t=$(curl -s -o /dev/null -m 10 -w '%{time_total}' http://127.0.0.1:$PORT/pid || echo 10)
  awk -v t="$t" 'BEGIN{exit !(t>=10)}' && fails=$((fails+1))
  worst=$(awk -v a="$worst" -v b="$t" 'BEGIN{print (b>a)?b:a}')
  sleep 0.5  # the probe's pace
done
wait $ST
P1=$(curl -s -m 5 http://127.0.0.1:$PORT/pid | cut -d' ' -f1)
echo "GETs: 70, timed out: $fails, worst: ${worst}s; worker pid before $P0 after $P1"
echo "worker deaths logged: $(grep -cE 'WORKER TIMEOUT|was sent SIG' "$LOG")"
grep -a "service available" "$LOG.slow" | tail -1
kill $SRV; wait $SRV 2>/dev/null
rm -f "$LOG" "$LOG.slow"
