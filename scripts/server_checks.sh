#!/usr/bin/env bash
# The server checks that need processes and tools outside cargo: the official openai
# Python client against a demo server (scripts/openai_client_check.py, in a venv of its
# own), then two replicas behind nginx (scripts/nginx_replicas.sh).
#   scripts/server_checks.sh [path/to/paligemma-server]
set -euo pipefail
cd "$(dirname "$0")/.."
export SERVER="${1:-target/release/paligemma-server}"

venv="${OPENAI_VENV:-$HOME/.venvs/openai-check}"
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'openai>=1.40,<4'
fi

log=$(mktemp)
"$SERVER" --model demo --model-id demo --port 18090 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 300); do
  curl -sf http://127.0.0.1:18090/health >/dev/null && break
  kill -0 $pid 2>/dev/null || { cat "$log" >&2; exit 1; }
  sleep 0.1
done
"$venv/bin/python" scripts/openai_client_check.py http://127.0.0.1:18090/v1
kill -TERM $pid
wait $pid
echo "the server exited cleanly after SIGTERM"
trap 'rm -f "$log"' EXIT

scripts/nginx_replicas.sh
