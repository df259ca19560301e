"""The wire: every message, the TCP frame, the Kafka topics and the units of money and energy. No I/O."""
