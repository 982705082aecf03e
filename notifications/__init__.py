"""Telling people: webhook deliveries (and, to come, email) from the outbox."""
