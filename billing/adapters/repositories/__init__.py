"""Billing's repositories: one class per aggregate, each built from one SQLAlchemy ``Connection``
(``XRepository(conn)``); the ports they implement are in :mod:`billing.services.ports`."""
