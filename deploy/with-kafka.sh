#!/usr/bin/env bash
# Runs a command with a fresh single-node Kafka broker on a free 127.0.0.1 port,
# exported as KAFKA_BOOTSTRAP, and stops that broker afterwards whatever the command did.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORT="$("$ROOT/.venv/bin/python" - <<'PY'
import socket
for _ in range(100):
    with socket.socket() as a:
        a.bind(("127.0.0.1", 0)); port = a.getsockname()[1]
    try:
        with socket.socket() as b:
            b.bind(("127.0.0.1", port + 1))
        print(port); break
    except OSError:
        continue
PY
)"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/gateway-kafka.XXXXXX")"
cleanup() { "$ROOT/deploy/kafka/kafka.sh" stop "$DIR" || true; rm -rf "$DIR"; }
trap cleanup EXIT
KAFKA_OWNER_PID=$$ "$ROOT/deploy/kafka/kafka.sh" start "$PORT" "$DIR"  # stopped even if this shell is killed
export KAFKA_BOOTSTRAP="127.0.0.1:$PORT"
set +e
"$@"
rc=$?
exit $rc
