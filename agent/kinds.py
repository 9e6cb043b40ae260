"""The event vocabulary, kept free of csp so that the command line can offer it without loading the graphs."""

SEVERITIES = ("info", "warning", "critical")
EVENT_KINDS = ("anomaly", "health", "maintenance", "risk", "signal", "price_alert", "news", "advice")
LABELS = ("real", "false")  # an operator's verdict on an event (`edge-agent label`): a real finding, a false alarm
