"""OpenTelemetry in: OTLP trace spans of instrumented agents become AgentStream events.

- :mod:`streams.otlp.mapping` is pure: an ``ExportTraceServiceRequest`` (plus a bounded
  memory of recent spans) in, typed events and per-span verdicts out;
- :mod:`streams.otlp.decode` turns OTLP/HTTP bodies (protobuf or JSON, gzip) into requests;
- :mod:`streams.otlp.receiver` serves OTLP/HTTP and OTLP/gRPC and writes through
  :class:`streams.producer.EventProducer`, answering success only once the log acked.

The mapping table is in docs/otel.md.
"""
