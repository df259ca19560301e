"""The control centre: registry, status, sessions and billing, operator commands."""
