"""Billing's use cases: load the catalog, run billing, finalize, statements, the live view."""
