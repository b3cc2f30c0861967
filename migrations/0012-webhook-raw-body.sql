-- 0012-webhook-raw-body: a webhook's body is kept exactly as Stripe signed it. jsonb cannot hold
-- the NUL character, so an event whose strings contain `\u0000` (a name or an address typed with
-- one) used to fail its insert, answer 500 and be lost after Stripe's retries. The raw body is
-- now kept as text (the escape is six characters there), and `payload` holds the same JSON with
-- each such character replaced by U+FFFD, which the effects read.
--
-- Rollback:
--   alter table webhook_events drop column raw_body;
--   delete from tally_migrations where version = 12;

alter table webhook_events add column raw_body text;
