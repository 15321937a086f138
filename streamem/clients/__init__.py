"""Config → Kafka client settings, one module per client library."""
