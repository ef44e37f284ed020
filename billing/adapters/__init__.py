"""Billing's adapters: PostgreSQL (the repositories and the unit of work, the models, engines and
migrations), Kafka (the usage sink, the live feed, the control topics), rendering, metrics. They
implement the ports of ``billing.services.ports`` and import no other service."""
