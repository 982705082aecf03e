"""Paying: Stripe customers and cards, credit purchases, auto-recharge, refunds.

Every charge is a ``payments`` row written before Stripe is called and settled by one
function (``settlement.settle``) whoever learns the outcome first: the API answer,
Stripe's webhook, or the ledger worker's sweep.
"""
