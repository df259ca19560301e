"""`make bench`: speed and scale of evcharge measured on this machine, beside the goals (never asserted)."""
