"""What billing's errors have in common.

Each service raises its own error class (``CatalogError``, ``BillingError``, ``InvoiceError``,
``KeyError_``); the ones that mean "there is no such thing" also carry :class:`NotFound`, so a
caller answers them alike — the command line with exit code 3, the HTTP API with 404 — without
reading messages::

    Exception
    ├── NotFound                      mixin: the thing asked for does not exist
    ├── services.billing_run.BillingError
    │   └── AccountNotFound (+NotFound)
    ├── services.invoices.InvoiceError
    │   └── InvoiceNotFound (+NotFound)
    ├── services.keys.KeyError_
    │   └── KeyNotFound (+NotFound)
    └── services.catalog.CatalogError  a catalog file is not loadable (every problem listed)
"""

from __future__ import annotations

__all__ = ["NotFound"]


class NotFound(Exception):
    """Mixin: the account, invoice or key asked for does not exist (or is not the caller's)."""
