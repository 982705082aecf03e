"""Credit grants: an expiry and a spending order for each credit (docs/grants.md)."""
