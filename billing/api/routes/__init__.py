"""The API's routers, one per area, in the order ``create_app`` includes them (the order of
``/openapi.json``): ops (health, metrics, the live page), live, usage, statements, invoices,
entitlements, credentials. Their collaborators and callers come from ``billing.api.deps``.

No module here has ``from __future__ import annotations``: FastAPI reads the parameters and
dependencies from the endpoints' annotations when each route is defined."""
