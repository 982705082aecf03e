"""Billing periods and invoices: the period closed once, its invoice from the ledger."""
