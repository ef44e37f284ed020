"""streamtoll metering: Kafka audit and metrics records in, usage windows and DLQ records out.

Knows no prices and no PostgreSQL. See ``README.md`` in this folder for what it owns.
"""
