-- 0017-usage-batch-custom-plans: the usage batch plans its big statement for each call.
--
-- PL/pgSQL keeps a statement's plan per connection and, after five calls, switches to a generic
-- plan (one made without the call's arrays) when that looks no more expensive. For the set-based
-- batch it is far more expensive and grows with the account's history: measured on one hot
-- account with 32 spends a batch, a batch took 4 ms with a plan made for its arguments and 29 ms
-- with the generic one, which the default switched to after a few hundred batches (9 ms, then
-- 19 ms). Planning the statement again each call costs well under a millisecond.
--
-- Rollback:
--   alter function tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz) reset plan_cache_mode;
--   delete from tally_migrations where version = 17;

alter function tally_usage_batch(text[], bigint[], text[], text[], jsonb[], text[], timestamptz)
  set plan_cache_mode = force_custom_plan;
