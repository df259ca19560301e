"""A charging point: the engine that supplies energy and the monitor that watches it."""
