-- 0020-credit-rule-items: what the credit rule needs to book each subscription item and bound
-- every clawback of one payment.
--
-- payments.total: the invoice's (or session's) total before the customer's Stripe balance was
--   applied, the denominator of a refund's or dispute's share (amount_paid is only what the card
--   paid). Rows recorded before this migration have none; they keep using amount_paid.
-- payments.prorated_back: credits that proration clawbacks (a downgrade, a prorated
--   cancellation) took back from the period this payment paid. A refund or dispute may take only
--   what neither it nor these took: all clawbacks of one payment together stay within its credits.
-- yearly_schedule.subscription_item: the subscription item a scheduled month's line bills, so
--   that each item of a yearly subscription gets its own month grant.
-- grants_one_period_per_plan: a subscription period (or yearly month) has one period grant per
--   plan, whatever its key. Period grants made before this release are keyed
--   `period:{subscription}:{start}`; from now on they are `period:{subscription}:{item}:{start}`.
--   Old keys are kept (history is not rewritten); this index makes it impossible for an old-key
--   and a new-key grant of the same plan and period to exist together (an invoice applied before
--   the upgrade and replayed after it). Stripe refuses two items of one price on a subscription.
--
-- Rollback:
--   drop index if exists grants_one_period_per_plan;
--   alter table yearly_schedule drop column if exists subscription_item;
--   alter table payments drop constraint if exists payment_clawbacks_bounded;
--   alter table payments drop column if exists prorated_back;
--   alter table payments drop column if exists total;
--   delete from tally_migrations where version = 20;

alter table payments add column total bigint;
alter table payments add column prorated_back bigint not null default 0;
alter table payments add constraint payment_clawbacks_bounded check (prorated_back >= 0 and prorated_back <= credits);
alter table yearly_schedule add column subscription_item text;
create unique index grants_one_period_per_plan on grants
  (account_id, (reference->>'subscription'), (reference->>'plan'), (reference->>'period_start'))
  where grant_key like 'period:%';
