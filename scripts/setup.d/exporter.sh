# The exporter's tests run real OTLP and Dataway receivers written in Python
# from upstream packages (services/exporter/tests/receivers/): grpcio and
# opentelemetry-proto for OTLP, line-protocol-parser as an independent parser of
# DataKit's line protocol. Sourced by scripts/setup.sh (log, pip_install defined).
if ! python3 -c 'import grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc, line_protocol_parser' 2>/dev/null; then
  log "installing the exporter's test receivers' packages (PyPI)"
  pip_install "grpcio>=1.60" "opentelemetry-proto>=1.30" "line-protocol-parser>=2.0"
fi
