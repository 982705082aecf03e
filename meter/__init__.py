"""The account's live state, shared by gateway, ledger and admin.

Redis key layout (`keys`), the Lua scripts (`lua/`, run through `scripts`),
the pure money and limit math (`money`), API key format (`apikeys`) and the
settings (`settings`). Gateway, ledger and admin import this package, never
each other.
"""
