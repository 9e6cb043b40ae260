"""The event vocabulary, kept free of csp so that the command line can offer it without loading the graphs."""

SEVERITIES = ("info", "warning", "critical")
EVENT_KINDS = ("anomaly", "health", "maintenance", "risk", "signal", "price_alert", "news", "advice")
LABELS = ("real", "false")  # an operator's verdict on an event (`edge-agent label`): a real finding, a false alarm
REASON_CODES = (  # the stable classes of dead-letter reasons: a metric label and a query filter
    "not_utf8", "bad_json", "not_object", "non_finite", "bad_text", "too_large", "bad_topic", "missing_field",
    "bad_field", "out_of_range", "bad_timestamp", "unknown_metric", "no_metric", "internal",
)
LEGACY_CODE = "unknown"  # the code of dead letters logged before reasons had codes
