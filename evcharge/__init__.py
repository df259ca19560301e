"""evcharge: a distributed EV-charging system on Apache Kafka."""

__version__ = "0.1.0"
