"""clari-sink: a Kafka consumer-group sink that delivers revenue data to Clari's ingest API."""

__version__ = "0.1.0"
