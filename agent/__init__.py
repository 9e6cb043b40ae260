"""Edgewatch agent: MQTT feeds through csp graphs into an event log, and back to MQTT."""

__version__ = "0.1.0"
