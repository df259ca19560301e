"""The driver's app: ask for charges, watch them live, keep every ticket."""
