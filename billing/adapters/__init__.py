"""Billing's adapters: SQLAlchemy models and database access, the Kafka consumers (the usage sink,
the live feed), rendering, metrics."""
