"""A Stripe test double: localstripe with Stripe's semantics where we rely on them.

How it works: localstripe (a GPL, test-only dependency) is an aiohttp app with a
module-global store. ``app.create_app`` configures that app before it starts:

- middlewares in front of it, outermost first: the ``/_double/`` control routes
  (answered directly, past localstripe's auth), the request journal, idempotency
  keys, fault switches, a 500 ``api_error`` for crashes; and behind its auth the
  marker that an endpoint began, the extra webhook events and ``card_error`` shaping;
- routes it lacks: Checkout Sessions and their page, Search;
- small wrappers on its classes where the behaviour is the object's own (what a
  card does when charged, off-session authentication, PaymentIntent description).

Only tests and the dev stack import this, lazily: localstripe is a dev dependency.
Run it with ``python -m meter.stripe_double --host 127.0.0.1 --port N``; see
docs/stripe-double.md.
"""
