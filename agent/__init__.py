"""Edgewatch agent: MQTT feeds through csp graphs into an event log, and back to MQTT.

Layers follow the data path (see docs/architecture.md): `ingest` (MQTT, validation, capture) ->
`analytics` (the csp nodes and their topology) -> `eventlog` (store, writer, outbox, sink), with `ops`
(metrics, HTTP, heartbeat) beneath them and `commands` (one module per CLI verb) and `testing` above.
"""
