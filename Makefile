# The whole set-up: `make run` (gateway + broker + drift consumer on the demo models)
# and `make test`. Everything they need is installed on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
MODELS := models/wine/1/model.json
KAFKA := deploy/kafka/kafka.sh
PYTEST_ARGS ?=

.PHONY: install tools kafka models run test bench bench-logging clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[train,bench,analysis,test]"
	touch $@

install: $(STAMP)

# Debian tools the tests and benchmarks drive: kcat (read Kafka from the shell), wrk (HTTP load),
# valgrind (loadtests.loop_instructions counts the request loop's instructions).
tools:
	@missing=""; for t in kcat wrk valgrind; do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

kafka:
	$(KAFKA) fetch

$(MODELS): $(STAMP) gateway/models/demo.py
	$(BIN)/gateway models build-demo --repository models

models: $(MODELS)

run: install models kafka
	deploy/run-demo.sh

test: install kafka tools
	deploy/with-kafka.sh $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install models kafka tools
	deploy/with-kafka.sh $(BIN)/python -m loadtests.bench

# Event logging on vs off (demo config, shadow challenger): CPU per request and closed-loop
# throughput, alternated rounds; method and results in docs/benchmarks/logging-cost.md.
bench-logging: install models kafka
	deploy/with-kafka.sh $(BIN)/python -m loadtests.logging_cost --quiet-wait 30 \
	  --out docs/benchmarks/logging-cost/run-$$(git rev-parse --short HEAD 2>/dev/null || echo local).json

clean:
	rm -rf $(VENV) .cache models

# drift-bench-begin
# The drift consumer's throughput: 1,000,000 scoring events into a fresh topic, drained by 1 and
# by 2 consumer processes in one group, 3 runs each (docs/benchmarks/drift-throughput.md).
.PHONY: bench-drift
bench-drift: install models kafka tools
	deploy/with-kafka.sh $(BIN)/python -m loadtests.drift_bench --events 1000000 --consumers 1 2 --repeats 5 \
	  --repository models --json docs/benchmarks/drift-throughput.json
# drift-bench-end
