"""Prefect flows: wiring only; every step is one call into the segflow library."""
