"""Billing's adapters: SQLAlchemy models and database access, Kafka, rendering."""
