"""`evcharge sim`: many simulated charging points and drivers in one process, for sizing a deployment.

`fleet` (the simulated engines, real monitors, shared Kafka wiring), `drivers`,
`report` (pure counters and percentiles) and `app` (the run).
"""
