"""Billing's use cases: sink usage, load the catalog, run billing, finalize, statements."""
