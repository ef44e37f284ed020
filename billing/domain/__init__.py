"""Billing's pure domain: money, units, plans and their stored documents, pricing, rating,
invoicing (an account's lines, totals, adjustments), the source choice, typed usage rows,
accounts and attribution, access, invoice documents. Standard library only (+ ``billing.errors``
and metering's shared records); import-linter holds it."""
