"""streamtoll billing: owns PostgreSQL (accounts, plans, usage rows, invoices, statements).

Reads only :mod:`metering.contracts` from metering.
"""
