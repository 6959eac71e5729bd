# The gateway on the demo models. The Kafka broker is not in the image: point KAFKA_BOOTSTRAP
# at yours (docs/events.md); without one, events wait in the disk spool (/app/spool).
#   docker build -t scoring-gateway .
#   docker run -p 8080:8080 -e KAFKA_BOOTSTRAP=broker:9092 -e GATEWAY_ADMIN_TOKEN=... scoring-gateway
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY scorers scorers
COPY config config
# The demo models are trained at build time (scikit-learn, converted to ONNX), as `make run`
# trains them; serving needs only onnxruntime.
RUN pip install --no-cache-dir ".[train]" \
 && gateway models build-demo --repository models
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 KAFKA_BOOTSTRAP=kafka:9092
EXPOSE 8080
CMD ["gateway", "serve", "--config", "config/demo.yaml"]
