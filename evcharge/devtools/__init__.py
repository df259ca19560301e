"""Tools for developing, demonstrating and measuring evcharge, not part of a deployment:
a local Kafka and PostgreSQL, the one-command demo, process supervision, the fleet simulator."""
