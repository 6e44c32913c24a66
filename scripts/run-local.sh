#!/usr/bin/env bash
# Runs the service locally against real PostgreSQL and RabbitMQ (started for you), then sends
# one simulated call through it and prints the call's record. The service keeps running until
# Ctrl-C; with --once it stops after showing the record.
set -euo pipefail
cd "$(dirname "$0")/.."

once=""
[ "${1:-}" = "--once" ] && once=1

scripts/services.sh
cargo build --locked --release -p cdr-service
bin=./target/release/cdr-service
port="${CDR_HTTP_PORT:-12052}"
export CDR__HTTP__LISTEN="${CDR__HTTP__LISTEN:-127.0.0.1:$port}"

"$bin" run &
svc=$!
stop() { kill -TERM "$svc" 2>/dev/null || true; wait "$svc" 2>/dev/null || true; }
trap stop EXIT INT TERM

for _ in $(seq 1 120); do
  if timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port && printf 'GET /health/ready HTTP/1.0\r\n\r\n' >&3 && head -n1 <&3" 2>/dev/null | grep -q ' 200'; then
    break
  fi
  kill -0 "$svc" 2>/dev/null || { echo "cdr-service exited; see its log above" >&2; exit 1; }
  sleep 0.5
done

echo
echo "== cdr-service is running: http://127.0.0.1:$port/metrics, /health/ready, /calls =="
echo "== publishing one simulated call (shuffled, with duplicates) =="
"$bin" simulate --order shuffled --duplicates 2 --seed "$RANDOM"

if [ -n "$once" ]; then
  exit 0
fi
echo
echo "== the service keeps running; publish more with: $bin simulate --help; Ctrl-C stops it =="
wait "$svc"
