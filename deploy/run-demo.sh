#!/usr/bin/env bash
# `make run`: a local broker, the drift consumer and the gateway on the demo models.
# Ctrl-C stops all three (only the processes this script started).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
export GATEWAY_PORT="${GATEWAY_PORT:-8080}"
CONFIG="${CONFIG:-config/demo.yaml}"
mkdir -p .run
if [ -z "${GATEWAY_ADMIN_TOKEN:-}" ]; then
  GATEWAY_ADMIN_TOKEN="$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
fi
export GATEWAY_ADMIN_TOKEN
( umask 077; printf '%s\n' "$GATEWAY_ADMIN_TOKEN" > .run/admin-token )

drift_pid=""
cleanup() {
  [ -n "$drift_pid" ] && kill -TERM "$drift_pid" 2>/dev/null && wait "$drift_pid" 2>/dev/null || true
  deploy/kafka/kafka.sh stop || true
}
trap cleanup EXIT INT TERM

KAFKA_OWNER_PID=$$ deploy/kafka/kafka.sh start "$KAFKA_PORT"
.venv/bin/gateway drift --config "$CONFIG" > .run/drift.log 2>&1 &
drift_pid=$!
cat <<MSG

  Gateway: http://127.0.0.1:$GATEWAY_PORT   (Kafka on $KAFKA_BOOTSTRAP, drift log in .run/drift.log)
  Try:
    curl -s -X POST http://127.0.0.1:$GATEWAY_PORT/v2/models/wine/infer \\
      -H 'Content-Type: application/json' \\
      -d '{"id": "demo-1", "inputs": [{"name": "input", "shape": [1, 13], "datatype": "FP32",
           "data": [14.23, 1.71, 2.43, 15.6, 127, 2.8, 3.06, 0.28, 2.29, 5.64, 1.04, 3.92, 1065]}]}'
    curl -s http://127.0.0.1:$GATEWAY_PORT/metrics | grep gateway_model_requests_total
    curl -s http://127.0.0.1:$GATEWAY_PORT/admin/routes -H "Authorization: Bearer \$(cat .run/admin-token)"
    curl -s http://127.0.0.1:$GATEWAY_PORT/experiments/wine
  Ctrl-C stops the gateway, the drift consumer and the broker.

MSG
.venv/bin/gateway serve --config "$CONFIG"
