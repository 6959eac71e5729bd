#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft) on 127.0.0.1 for development and tests.
#
#   deploy/kafka/kafka.sh fetch                 resolve the broker jars from Maven Central (cached)
#   deploy/kafka/kafka.sh start [PORT] [DIR]    format storage in DIR, start, wait until it answers
#   deploy/kafka/kafka.sh stop [DIR]            stop the broker started from DIR (by its pid), wait
#   deploy/kafka/kafka.sh status [DIR]
#
# PORT defaults to $KAFKA_PORT or 9092; DIR to $KAFKA_DIR or .cache/kafka/run-PORT.
# A DIR that already holds a broker for PORT is resumed with its data (stop, then start again
# is a broker restart); any other DIR is wiped and formatted afresh.
# The controller listens on PORT+1. Only processes this script started are ever stopped.
# With KAFKA_OWNER_PID set, `start` also leaves a watcher that stops the broker once that process
# has ended, however it ended: a test run or benchmark killed with SIGKILL leaves no broker behind
# (`kafka.sh watch OWNER BROKER_PID DIR` is that watcher; its log is DIR/logs/watch.log).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
CACHE="${KAFKA_CACHE:-$ROOT/.cache/kafka}"
LIBS="$CACHE/libs"

# The jars are resolved again only when pom.xml's content changes: the stamp holds its hash, not
# a time, so a fresh clone or git worktree pointed at a shared KAFKA_CACHE does not fetch again.
fetch() {
  local pom_hash
  pom_hash="$(sha256sum "$HERE/pom.xml" | cut -d' ' -f1)"
  if [ "$(cat "$LIBS/.complete" 2>/dev/null)" = "$pom_hash" ]; then return 0; fi
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka; install it (apt-get install maven)" >&2; exit 1; }
  command -v java >/dev/null || { echo "kafka.sh: Java 17+ is needed to run Kafka; install it (apt-get install openjdk-17-jre-headless)" >&2; exit 1; }
  echo "kafka.sh: resolving Kafka jars with Maven into $LIBS" >&2
  rm -rf "$LIBS"; mkdir -p "$LIBS"
  mvn -q -B -f "$HERE/pom.xml" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2
  echo "$pom_hash" > "$LIBS/.complete"
}

java_run() {
  java -Xms256m -Xmx512m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$1" \
    -cp "$LIBS/*" "${@:2}"
}

is_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether pid is still a broker this script launched (not a process that took its pid since).
is_broker() { grep -qa "kafka.Kafka" "/proc/$1/cmdline" 2>/dev/null; }

# Whether DIR's pid file names a running broker.
dir_has_broker() { [ -f "$1/broker.pid" ] && is_broker "$(cat "$1/broker.pid")"; }

start() {
  local port="${1:-${KAFKA_PORT:-9092}}"
  local dir="${2:-${KAFKA_DIR:-$CACHE/run-$port}}"
  fetch
  if dir_has_broker "$dir"; then
    echo "kafka.sh: broker already running (pid $(cat "$dir/broker.pid")) on 127.0.0.1:$port" >&2; return 0
  fi
  if is_up "$port"; then echo "kafka.sh: port $port is taken by another process; choose another port" >&2; exit 1; fi
  local cport=$((port + 1))
  if [ -f "$dir/data/meta.properties" ] && grep -q "^listeners=PLAINTEXT://127.0.0.1:$port," "$dir/server.properties" 2>/dev/null; then
    echo "kafka.sh: resuming the broker in $dir with its data" >&2
    launch "$port" "$dir"; return
  fi
  rm -rf "$dir"; mkdir -p "$dir/data" "$dir/logs"
  cat > "$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
num.partitions=${KAFKA_PARTITIONS:-3}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=24
log.segment.bytes=67108864
PROPS
  java_run "$dir/logs" kafka.tools.StorageTool format -t "$(java_run "$dir/logs" kafka.tools.StorageTool random-uuid | tail -1)" \
    -c "$dir/server.properties" > "$dir/logs/format.log" 2>&1 \
    || { cat "$dir/logs/format.log" >&2; exit 1; }
  launch "$port" "$dir"
}

launch() {
  local port="$1" dir="$2"
  # GC and safepoint pauses logged beside the broker's own log: a broker that stops answering
  # for seconds under load is told apart from one starved of CPU (logs/gc.log, uptime stamps).
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    "-Xlog:gc,safepoint:file=$dir/logs/gc.log:time,uptime:filecount=2,filesize=20m" \
    -Dlog4j2.configurationFile="$HERE/log4j2.properties" -Dkafka.logs.dir="$dir/logs" \
    -cp "$LIBS/*" kafka.Kafka "$dir/server.properties" > "$dir/logs/stdout.log" 2>&1 &
  echo $! > "$dir/broker.pid"
  for _ in $(seq 1 120); do
    if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
      echo "kafka.sh: broker exited during start-up; last lines of $dir/logs/stdout.log:" >&2
      tail -20 "$dir/logs/stdout.log" >&2; exit 1
    fi
    if is_up "$port" && grep -q "Kafka Server started" "$dir/logs/stdout.log" 2>/dev/null; then
      echo "kafka.sh: broker up on 127.0.0.1:$port (pid $(cat "$dir/broker.pid"), dir $dir)" >&2
      if [ -n "${KAFKA_OWNER_PID:-}" ]; then
        # its own session, so that a kill of the owner's process group does not take it first
        setsid "$HERE/kafka.sh" watch "$KAFKA_OWNER_PID" "$(cat "$dir/broker.pid")" "$dir" < /dev/null >> "$dir/logs/watch.log" 2>&1 &
      fi
      return 0
    fi
    sleep 0.5
  done
  echo "kafka.sh: broker did not answer on 127.0.0.1:$port within 60 s; see $dir/logs/stdout.log" >&2
  exit 1
}

# Stops broker PID (if it still is one), then removes DIR's pid file.
stop_pid() {
  local pid="$1" dir="$2"
  if is_broker "$pid" && kill -TERM "$pid" 2>/dev/null; then  # it may end between check and signal
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    echo "kafka.sh: broker (pid $pid) stopped" >&2
  fi
  rm -f "$dir/broker.pid"
}

stop() {
  local dir="${1:-${KAFKA_DIR:-$CACHE/run-${KAFKA_PORT:-9092}}}"
  [ -f "$dir/broker.pid" ] || { echo "kafka.sh: no broker pid file in $dir" >&2; return 0; }
  stop_pid "$(cat "$dir/broker.pid")" "$dir"
}

# Whether pid runs: a zombie (ended, its parent not yet told) has ended.
running() { local state; state="$(sed -n 's/.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null)"; [ -n "$state" ] && [ "$state" != Z ]; }

# Polls once a second; ends by itself when the broker does (a plain `stop`).
watch() {
  local owner="$1" pid="$2" dir="$3"
  while running "$owner" && is_broker "$pid"; do sleep 1; done
  if is_broker "$pid"; then
    echo "kafka.sh: owner (pid $owner) ended; stopping its broker" >&2
    stop_pid "$pid" "$dir"
  fi
}

status() {
  local dir="${1:-${KAFKA_DIR:-$CACHE/run-${KAFKA_PORT:-9092}}}"
  if dir_has_broker "$dir"; then
    echo "running (pid $(cat "$dir/broker.pid"))"
  else
    echo "stopped"; return 1
  fi
}

cmd="${1:-}"; shift || true
case "$cmd" in
  fetch) fetch ;;
  start) start "$@" ;;
  stop) stop "$@" ;;
  status) status "$@" ;;
  watch) watch "$@" ;;
  *) echo "usage: $0 fetch|start [PORT] [DIR]|stop [DIR]|status [DIR]" >&2; exit 2 ;;
esac
