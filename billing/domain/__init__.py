"""Billing's pure domain: money, plans, pricing, periods, invoices. Imports no framework."""
