-- 0009-attribution: why an event was ignored (a foreign object, or a payment no account can be
-- attributed to); every payment intent that paid an invoice (Stripe may take several payments
-- for one invoice, and a refund may name any of them); every refund Tally applied, even one whose
-- proportional clawback is 0 credits (so reconciliation can tell "applied, nothing to take" from
-- "missing"); trial claims on payment methods other than cards; and the order of a subscription's
-- states within one second, which Stripe's event timestamps cannot tell apart.
--
-- Rollback:
--   drop function if exists tally_subscription_status_rank(text);
--   delete from trial_claims where kind = 'payment_method';
--   alter table trial_claims drop constraint claim_kind;
--   alter table trial_claims add constraint claim_kind check (kind in ('account', 'email', 'device', 'card'));
--   drop table if exists payment_refunds, invoice_payment_intents;
--   alter table webhook_events drop column if exists ignored_reason;
--   delete from tally_migrations where version = 9;

alter table webhook_events add column ignored_reason text;

-- One row per payment intent that paid an invoice (invoice_payment.paid), the first one included.
create table invoice_payment_intents (
  payment_intent text primary key,
  invoice_id text not null,
  event_id text not null,
  created_at timestamptz not null default now()
);
create index invoice_payment_intents_by_invoice on invoice_payment_intents (invoice_id);

-- A refund Tally applied to a payment, with the credits its clawback took (0 when the proportion
-- rounds down to nothing or the payment had nothing left to take).
create table payment_refunds (
  refund_id text primary key,
  payment_id bigint not null references payments (id),
  credits bigint not null constraint refund_credits_not_negative check (credits >= 0),
  created_at timestamptz not null default now()
);

alter table trial_claims drop constraint claim_kind;
alter table trial_claims add constraint claim_kind check (kind in ('account', 'email', 'device', 'card', 'payment_method'));

-- Within one second, which of two subscription states is the later one. Stripe's lifecycle only
-- moves forward through these groups inside a second (a checkout creates `incomplete` then
-- `active`; a trial starts `trialing`; a failed renewal goes `past_due`, then `unpaid`; `canceled`
-- is final), so the higher rank is the newer state. Used after the event time and the period start.
create function tally_subscription_status_rank(p_status text) returns integer
language sql immutable as $$
  select case p_status
    when 'incomplete' then 0
    when 'trialing' then 1
    when 'active' then 2
    when 'past_due' then 3
    when 'unpaid' then 4
    when 'paused' then 4
    when 'incomplete_expired' then 5
    when 'canceled' then 5
    else 2 end
$$;
