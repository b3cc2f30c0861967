-- 0006-invoice-payment-links: which payment intent paid which invoice, as invoice_payment.paid
-- events say. Kept whether or not the invoice bought credits, so that the event is applied at
-- once instead of waiting (and finally failing) for an invoice that Tally never grants for.
--
-- Rollback:
--   drop table if exists invoice_payment_links;
--   delete from tally_migrations where version = 6;

create table invoice_payment_links (
  invoice_id text primary key,
  payment_intent text not null,
  event_id text not null,
  created_at timestamptz not null default now()
);
