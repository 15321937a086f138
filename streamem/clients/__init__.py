"""Config → Kafka client settings, one module per client library (the transports take these as
plain dicts and never read the config themselves)."""
