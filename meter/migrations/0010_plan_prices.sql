-- A plan's prices of its own: the deployment's routes it prices differently
-- (gateway.pricing.parse_override's spec); null: the deployment's prices. An account
-- on such a plan names it in price_table, which its live config carries to Redis.

alter table plans add column prices jsonb check (prices is null or jsonb_typeof(prices) = 'object');
alter table accounts add column price_table text references plans (id);
