#!/usr/bin/env bash
# Two paligemma-server replicas on loopback behind nginx (deploy/nginx.conf): requests
# through nginx reach both replicas and get the same answers, a stream passes through
# unbuffered, and stopping one replica (SIGTERM) loses no request.
#
# Needs nginx and curl, and target/release/paligemma-server:
#   cargo build --release --features server --bin paligemma-server
#   scripts/nginx_replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."

server="${SERVER:-target/release/paligemma-server}"
[[ -x $server ]] || { echo "build $server first (cargo build --release --features server --bin paligemma-server)" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is not installed" >&2; exit 1; }

work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

for port in 18081 18082; do
  "$server" --model demo --model-id demo --port "$port" --log-format json >"$work/replica-$port.log" 2>&1 &
  pids+=($!)
done
replica_pid=("${pids[0]}" "${pids[1]}")
nginx -p "$work/" -c "$PWD/deploy/nginx.conf" &
pids+=($!)

wait_ready() {
  for _ in $(seq 200); do
    if curl -sf "http://127.0.0.1:$1/health" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "port $1 never became ready" >&2
  exit 1
}
wait_ready 18081
wait_ready 18082
wait_ready 18080

image=$(base64 -w0 examples/shapes.png)
printf '{"image": "%s"}' "$image" >"$work/body.json"
caption() { curl -sf "http://127.0.0.1:$1/v1/caption" -H 'content-type: application/json' -d "@$work/body.json"; }
expected=$(caption 18081 | sed 's/.*"text":"\([^"]*\)".*/\1/')
echo "caption from replica 1: $expected"

# 24 requests, 8 at a time, through nginx.
export work
seq 24 | xargs -P 8 -I{} sh -c 'curl -sf http://127.0.0.1:18080/v1/caption -H "content-type: application/json" -d "@$work/body.json" >"$work/answer-{}.json"'
for i in $(seq 24); do
  got=$(sed 's/.*"text":"\([^"]*\)".*/\1/' "$work/answer-$i.json")
  [[ $got == "$expected" ]] || { echo "answer $i differs: $got" >&2; exit 1; }
done
served() { curl -sf "http://127.0.0.1:$1/metrics" | awk '/^paligemma_requests_total\{endpoint="\/v1\/caption",status="200"\}/ {print $2}'; }
a=$(served 18081); b=$(served 18082)
echo "caption requests served: replica 1: $a (one direct), replica 2: $b"
(( a > 1 && b > 0 )) || { echo "nginx did not use both replicas" >&2; exit 1; }

# A stream through nginx arrives whole, ending with [DONE].
printf '{"model": "demo", "stream": true, "messages": [{"role": "user", "content": [{"type": "text", "text": "caption en"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,%s"}}]}]}' "$image" >"$work/chat.json"
curl -sfN http://127.0.0.1:18080/v1/chat/completions -H 'content-type: application/json' -d "@$work/chat.json" >"$work/stream.txt"
grep -q '^data: \[DONE\]' "$work/stream.txt" || { echo "the stream did not end with [DONE]" >&2; exit 1; }
echo "stream through nginx: $(grep -c '^data: ' "$work/stream.txt") events, ends with [DONE]"

# Stop replica 1 gracefully; every request still succeeds through nginx.
kill -TERM "${replica_pid[0]}"
for i in $(seq 8); do
  got=$(caption 18080 | sed 's/.*"text":"\([^"]*\)".*/\1/')
  [[ $got == "$expected" ]] || { echo "after stopping replica 1, answer $i: $got" >&2; exit 1; }
done
echo "replica 1 stopped: 8 more requests answered by replica 2"
echo "ok"
