"""`evcharge sim`: many simulated charging points and drivers, in one process or split over several, for
sizing a deployment.

`fleet` (the simulated engines, real monitors, shared Kafka wiring), `drivers`,
`report` (pure counters and percentiles) and `app` (the run); with `--processes N`,
`split` (the shares, pure), `wire` (what a worker and its parent say, pure),
`merge` (one report of many, pure), `link` (a worker's side) and `pool` (the parent's).
"""
