"""Every error billing raises on purpose, in one tree (stdlib only: the domain raises them too).

Each one carries one sentence a person can act on (the ones with ``problems`` list every
mistake at once). The ones that mean "there is no such thing" are also :class:`NotFound`, so a
caller answers them alike — the command line with exit code 3, the HTTP API with 404 — without
reading messages::

    BillingError                    anything billing raises on purpose
    ├── NotFound                    the account, invoice, key … asked for does not exist
    │                               (or is not the caller's); a mixin of the *NotFound below
    ├── BillingSettingsError        settings cannot work (``problems``: every one at once)
    ├── CatalogError                a catalog file cannot be loaded (``problems``, each with where)
    │   ├── AccountError (+ValueError)  an accounts document is invalid
    │   └── PlanError (+ValueError)     a plan entry is invalid
    ├── RunError                    a billing run, preview or statement cannot be done as asked
    │   ├── AccountNotFound (+NotFound)
    │   └── PlanNotFound (+NotFound)    a shadow run's candidate plan or version
    ├── InvoiceError                an invoice operation is not possible (status, reference …)
    │   └── InvoiceNotFound (+NotFound)
    ├── CreditNoteError             a credit note cannot be issued as asked (over the cap, not finalized …)
    │   └── CreditNoteNotFound (+NotFound)
    ├── GrantError                  a grant cannot be added or voided as asked
    │   └── GrantNotFound (+NotFound)
    ├── AmendmentError              usage corrections cannot be imported as asked (``problems``: every row's)
    │   └── AmendmentNotFound (+NotFound)
    ├── ApiKeyError                 an API key cannot be created or revoked as asked
    │   └── ApiKeyNotFound (+NotFound)
    ├── CredentialError             a Kafka credential cannot be created, rotated or revoked
    │   └── CredentialNotFound (+NotFound)
    ├── EntitlementError            entitlements cannot be published or shown
    │   └── EntitlementNotFound (+NotFound)
    ├── IdempotencyError            an ``Idempotency-Key`` cannot be used for this request
    │   ├── KeyInUse                    a request with this key is still running
    │   └── KeyReused                   the key was used for another request
    ├── ProductError                a product cannot be subscribed, approved, rejected … as asked
    │   ├── ProductNotFound (+NotFound) the product, version, request or subscription
    │   └── ProductNotOffered           the account's plan does not include the product
    ├── PublishError                the cluster did not take the control records (or the topic)
    └── WebhookError                a webhook endpoint cannot be added, removed or replayed as asked
        └── WebhookNotFound (+NotFound)

Outside the tree, on purpose: the HTTP layer's own signals (``billing.api.problems.ProblemError``
carries an RFC 9457 answer, ``billing.api.quota.TooMany`` a refused slot); they never leave the
API, which turns every error above into a problem answer.
"""

from __future__ import annotations

__all__ = [
    "AccountError",
    "AccountNotFound",
    "AmendmentError",
    "AmendmentNotFound",
    "ApiKeyError",
    "ApiKeyNotFound",
    "BillingError",
    "BillingSettingsError",
    "CatalogError",
    "CredentialError",
    "CredentialNotFound",
    "CreditNoteError",
    "CreditNoteNotFound",
    "EntitlementError",
    "EntitlementNotFound",
    "GrantError",
    "GrantNotFound",
    "IdempotencyError",
    "InvoiceError",
    "InvoiceNotFound",
    "KeyInUse",
    "KeyReused",
    "NotFound",
    "PlanError",
    "PlanNotFound",
    "ProductError",
    "ProductNotFound",
    "ProductNotOffered",
    "PublishError",
    "RunError",
    "WebhookError",
    "WebhookNotFound",
]


class BillingError(Exception):
    """Base of every error billing raises on purpose."""


class NotFound(BillingError):
    """The account, invoice or key asked for does not exist (or is not the caller's)."""


class _Problems(BillingError):
    """An error that lists every problem found at once (``problems``)."""

    prefix = ""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(self.describe(problems))

    @classmethod
    def describe(cls, problems: list[str]) -> str:
        return cls.prefix + "; ".join(problems)


class BillingSettingsError(_Problems):
    """One or more settings are invalid; ``problems`` lists every one of them."""

    prefix = "Invalid settings: "


class CatalogError(_Problems):
    """A catalog file cannot be loaded; ``problems`` lists every reason with where it is."""


class AccountError(CatalogError, ValueError):
    """An accounts document is invalid; ``problems`` lists every mistake with where it is."""

    @classmethod
    def describe(cls, problems: list[str]) -> str:
        return f"{len(problems)} problem(s): " + "; ".join(problems)


class PlanError(CatalogError, ValueError):
    """A plan entry is invalid; ``problems`` lists every problem found, each with its path."""

    prefix = "Invalid plan: "


class RunError(BillingError):
    """A billing run (or a preview, a statement) cannot be done as asked; one sentence."""


class AccountNotFound(RunError, NotFound):
    """There is no account with that code."""


class PlanNotFound(RunError, NotFound):
    """There is no plan (or plan version) with that code."""


class InvoiceError(BillingError):
    """An invoice operation is not possible (unknown invoice, wrong status …); one sentence."""


class InvoiceNotFound(InvoiceError, NotFound):
    """No invoice has that reference (or it has no document yet: a draft's PDF)."""


class CreditNoteError(BillingError):
    """A credit note cannot be issued as asked (more than is left, an invoice not finalized …)."""


class CreditNoteNotFound(CreditNoteError, NotFound):
    """No credit note has that number."""


class GrantError(BillingError):
    """A grant cannot be added or voided as asked (an amount in the wrong unit, voided twice …)."""


class GrantNotFound(GrantError, NotFound):
    """No grant has that id (or it is not the caller's)."""


class AmendmentError(_Problems):
    """Usage corrections cannot be imported as asked; ``problems`` lists every one (each row's
    with its number), one sentence each."""

    @classmethod
    def describe(cls, problems: list[str]) -> str:
        return f"{len(problems)} problem(s): " + "; ".join(problems)


class AmendmentNotFound(AmendmentError, NotFound):
    """No amendment has that id (``AmendmentNotFound("there is no amendment 7")``)."""

    def __init__(self, message: str) -> None:
        super().__init__([message])

    @classmethod
    def describe(cls, problems: list[str]) -> str:
        return "; ".join(problems)


class ApiKeyError(BillingError):
    """An API key cannot be created or revoked as asked; one sentence."""


class ApiKeyNotFound(ApiKeyError, NotFound):
    """No such (active) key, or no such account to bind a key to."""


class CredentialError(BillingError):
    """A credential cannot be created, rotated or revoked as asked; one sentence."""


class CredentialNotFound(CredentialError, NotFound):
    """No such (active) credential, or no such account."""


class EntitlementError(BillingError):
    """Entitlements cannot be published or shown as asked; one sentence."""


class EntitlementNotFound(EntitlementError, NotFound):
    """No such account."""


class IdempotencyError(BillingError):
    """The ``Idempotency-Key`` cannot be used for this request."""


class KeyInUse(IdempotencyError):
    """A request with this key is still running."""


class KeyReused(IdempotencyError):
    """The key was used for another request."""


class ProductError(BillingError):
    """A product subscription cannot be made, approved, rejected or cancelled as asked."""


class ProductNotFound(ProductError, NotFound):
    """There is no such product (version), product request or subscription (or not the caller's)."""


class ProductNotOffered(ProductError):
    """The account's plan in force does not include the product."""


class PublishError(BillingError):
    """The cluster did not take the records (or the topic); one sentence."""


class WebhookError(BillingError):
    """A webhook endpoint cannot be added or removed, or a delivery replayed, as asked; one sentence."""


class WebhookNotFound(WebhookError, NotFound):
    """No such account, (active) endpoint or delivery."""
