"""The Alembic migrations; installed as the package ``billing.migrations`` (pyproject.toml)."""
