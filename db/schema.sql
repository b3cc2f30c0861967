-- The migrated schema, dumped by `npm run schema` (src/db/schema-dump.ts). Do not edit: change a
-- migration or a file of db/functions/, then dump again; a test fails while this file is stale.


create table account_plans (
  account_id text not null,
  plan_id text,
  source text not null,
  entitlements jsonb not null,
  updated_at timestamp with time zone not null default now()
);
alter table account_plans add constraint account_plan_source CHECK ((source = ANY (ARRAY['subscription'::text, 'trial'::text, 'free'::text, 'none'::text])));
alter table account_plans add constraint account_plans_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table account_plans add constraint account_plans_pkey PRIMARY KEY (account_id);

create table accounts (
  id text not null,
  email text,
  name text,
  metadata jsonb not null default '{}'::jsonb,
  stripe_customer_id text,
  available bigint not null default 0,
  held bigint not null default 0,
  debt bigint not null default 0,
  created_at timestamp with time zone not null default now(),
  updated_at timestamp with time zone not null default now(),
  flagged boolean not null default false,
  device_fingerprint_hash text,
  low_balance_threshold bigint,
  top_up_threshold bigint,
  spend_limited boolean not null default false,
  carry numeric not null default 0
);
alter table accounts add constraint account_id_format CHECK ((id ~ '^[A-Za-z0-9_.:@-]{1,128}$'::text));
alter table accounts add constraint available_not_negative CHECK ((available >= 0));
alter table accounts add constraint available_or_debt CHECK (((available = 0) OR (debt = 0)));
alter table accounts add constraint balances_safe CHECK (((available <= '9007199254740991'::bigint) AND (held <= '9007199254740991'::bigint) AND (debt <= '9007199254740991'::bigint)));
alter table accounts add constraint carry_range CHECK (((carry >= (0)::numeric) AND (carry < (1)::numeric)));
alter table accounts add constraint debt_not_negative CHECK ((debt >= 0));
alter table accounts add constraint email_length CHECK ((char_length(email) <= 320));
alter table accounts add constraint held_not_negative CHECK ((held >= 0));
alter table accounts add constraint low_balance_threshold_range CHECK (((low_balance_threshold >= 1) AND (low_balance_threshold <= '9007199254740991'::bigint)));
alter table accounts add constraint metadata_is_object CHECK ((jsonb_typeof(metadata) = 'object'::text));
alter table accounts add constraint name_length CHECK ((char_length(name) <= 200));
alter table accounts add constraint top_up_threshold_range CHECK (((top_up_threshold >= 1) AND (top_up_threshold <= '9007199254740991'::bigint)));
alter table accounts add constraint accounts_pkey PRIMARY KEY (id);
alter table accounts add constraint accounts_stripe_customer_id_key UNIQUE (stripe_customer_id);
CREATE TRIGGER accounts_balance_events AFTER UPDATE OF available, debt ON public.accounts FOR EACH ROW WHEN ((((new.available < old.available) AND (((new.available < new.low_balance_threshold) AND (old.available >= new.low_balance_threshold)) OR ((new.available < new.top_up_threshold) AND (old.available >= new.top_up_threshold)) OR (new.available = 0))) OR ((old.debt = 0) AND (new.debt > 0)))) EXECUTE FUNCTION tally_account_events();

create table alert_deliveries (
  alert_id bigint not null,
  sink text not null,
  delivered_at timestamp with time zone,
  attempts integer not null default 0,
  next_attempt_at timestamp with time zone not null default now(),
  last_error text,
  action text not null default 'trigger'::text
);
alter table alert_deliveries add constraint alert_delivery_action CHECK ((action = ANY (ARRAY['trigger'::text, 'resolve'::text])));
alter table alert_deliveries add constraint alert_deliveries_alert_id_fkey FOREIGN KEY (alert_id) REFERENCES alerts(id);
alter table alert_deliveries add constraint alert_deliveries_pkey PRIMARY KEY (alert_id, sink, action);
CREATE INDEX alert_deliveries_due ON public.alert_deliveries USING btree (next_attempt_at) WHERE (delivered_at IS NULL);

create table alerts (
  id bigint not null,
  alert_key text not null,
  kind text not null,
  severity text not null,
  message text not null,
  details jsonb not null default '{}'::jsonb,
  account_id text,
  count integer not null default 1,
  first_at timestamp with time zone not null default now(),
  last_at timestamp with time zone not null default now(),
  delivered_at timestamp with time zone,
  delivery_attempts integer not null default 0,
  resolved_at timestamp with time zone
);
alter table alerts add constraint alert_severity CHECK ((severity = ANY (ARRAY['info'::text, 'warning'::text, 'critical'::text])));
alter table alerts add constraint alerts_pkey PRIMARY KEY (id);
CREATE INDEX alerts_by_key ON public.alerts USING btree (alert_key, last_at DESC);
CREATE INDEX alerts_recent ON public.alerts USING btree (last_at DESC);

create table audit_log (
  id bigint not null,
  account_id text,
  actor text not null,
  action text not null,
  reason text,
  before jsonb,
  after jsonb,
  created_at timestamp with time zone not null default now()
);
alter table audit_log add constraint audit_log_pkey PRIMARY KEY (id);
CREATE INDEX audit_log_by_account ON public.audit_log USING btree (account_id, id DESC);

create table auto_top_ups (
  account_id text not null,
  enabled boolean not null,
  threshold bigint not null,
  pack_id text not null,
  max_per_month integer not null,
  failures_in_row integer not null default 0,
  updated_at timestamp with time zone not null default now()
);
alter table auto_top_ups add constraint auto_top_up_max_range CHECK (((max_per_month >= 1) AND (max_per_month <= 1000)));
alter table auto_top_ups add constraint auto_top_up_threshold_range CHECK (((threshold >= 1) AND (threshold <= '9007199254740991'::bigint)));
alter table auto_top_ups add constraint auto_top_ups_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table auto_top_ups add constraint auto_top_ups_pkey PRIMARY KEY (account_id);

create table billing_periods (
  subscription_id text not null,
  period_start bigint not null,
  period_end bigint not null,
  billing_interval text not null,
  account_id text not null
);
alter table billing_periods add constraint billing_period_interval CHECK ((billing_interval = ANY (ARRAY['month'::text, 'year'::text])));
alter table billing_periods add constraint billing_period_order CHECK ((period_end > period_start));
alter table billing_periods add constraint billing_periods_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table billing_periods add constraint billing_periods_pkey PRIMARY KEY (subscription_id, period_start);
CREATE INDEX billing_periods_by_end ON public.billing_periods USING btree (subscription_id, period_end);

create table catalog_plans (
  id text not null,
  rate_card_id text,
  updated_at timestamp with time zone not null default now(),
  free boolean not null default false,
  credits_per_month bigint not null default 0,
  entitlements jsonb,
  recurring_grants jsonb not null default '[]'::jsonb
);
alter table catalog_plans add constraint entitlements_shape CHECK (((entitlements IS NULL) OR ((jsonb_typeof(entitlements) = 'object'::text) AND (((entitlements -> 'meters'::text) = '"all"'::jsonb) OR (jsonb_typeof((entitlements -> 'meters'::text)) = 'array'::text)) AND (jsonb_typeof((entitlements -> 'features'::text)) = 'object'::text))));
alter table catalog_plans add constraint recurring_grants_shape CHECK ((jsonb_typeof(recurring_grants) = 'array'::text));
alter table catalog_plans add constraint catalog_plans_rate_card_id_fkey FOREIGN KEY (rate_card_id) REFERENCES rate_cards(id);
alter table catalog_plans add constraint catalog_plans_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX catalog_plans_one_free ON public.catalog_plans USING btree (free) WHERE free;

create table entries (
  id bigint not null,
  account_id text not null,
  kind text not null,
  amount bigint not null,
  balance_after bigint not null,
  grant_ids bigint[] not null default '{}'::bigint[],
  grant_credits bigint[] not null default '{}'::bigint[],
  hold_id bigint,
  idempotency_key text not null,
  reference jsonb not null default '{}'::jsonb,
  actor text not null,
  reason text,
  created_at timestamp with time zone not null default now(),
  payload_hash text,
  meter text,
  quantities jsonb,
  rate_card_id text,
  rate_card_version integer,
  cost numeric,
  carry_after numeric
);
alter table entries add constraint admin_has_reason CHECK (((actor <> 'admin'::text) OR (reason IS NOT NULL)));
alter table entries add constraint entry_actor CHECK ((actor = ANY (ARRAY['app'::text, 'admin'::text, 'stripe'::text, 'system'::text])));
alter table entries add constraint entry_kind CHECK ((kind = ANY (ARRAY['grant'::text, 'usage'::text, 'hold'::text, 'capture'::text, 'release'::text, 'expire'::text, 'clawback'::text, 'restore'::text, 'adjustment'::text])));
alter table entries add constraint grant_arrays_match CHECK ((cardinality(grant_ids) = cardinality(grant_credits)));
alter table entries add constraint payload_hash_of_usage CHECK (((payload_hash IS NULL) OR (kind = 'usage'::text))) NOT VALID;
alter table entries add constraint priced_entry CHECK ((((meter IS NULL) AND (quantities IS NULL) AND (rate_card_id IS NULL) AND (rate_card_version IS NULL) AND (cost IS NULL) AND (carry_after IS NULL)) OR ((meter IS NOT NULL) AND (quantities IS NOT NULL) AND (rate_card_id IS NOT NULL) AND (rate_card_version IS NOT NULL) AND (cost >= (0)::numeric) AND (kind = ANY (ARRAY['usage'::text, 'hold'::text, 'capture'::text])) AND ((carry_after IS NULL) = (kind = 'hold'::text)) AND ((carry_after IS NULL) OR ((carry_after >= (0)::numeric) AND (carry_after < (1)::numeric)))))) NOT VALID;
alter table entries add constraint entries_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table entries add constraint entries_pkey PRIMARY KEY (id);
alter table entries add constraint entry_key_unique UNIQUE (account_id, idempotency_key);
CREATE INDEX entries_by_account ON public.entries USING btree (account_id, id DESC);
CREATE INDEX entries_created_brin ON public.entries USING brin (created_at);
alter table entries alter column account_id set (n_distinct=-0.01);
CREATE TRIGGER entries_append_only BEFORE DELETE OR UPDATE ON public.entries FOR EACH ROW EXECUTE FUNCTION tally_refuse_entry_change();
CREATE TRIGGER entries_events AFTER INSERT ON public.entries FOR EACH ROW WHEN (((new.kind = ANY (ARRAY['clawback'::text, 'restore'::text])) OR ((new.kind = 'expire'::text) AND (new.reference ? 'grant_id'::text)))) EXECUTE FUNCTION tally_entry_events();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON public.entries FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse_entry_change();

create table event_deliveries (
  endpoint_id bigint not null,
  sequence bigint not null,
  account_id text not null,
  delivered_at timestamp with time zone,
  attempts integer not null default 0,
  first_failed_at timestamp with time zone,
  next_attempt_at timestamp with time zone not null default '-infinity'::timestamp with time zone,
  last_error text
);
alter table event_deliveries add constraint event_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id) REFERENCES webhook_endpoints(id) ON DELETE CASCADE;
alter table event_deliveries add constraint event_deliveries_pkey PRIMARY KEY (endpoint_id, sequence);
CREATE INDEX event_deliveries_due ON public.event_deliveries USING btree (next_attempt_at) WHERE (delivered_at IS NULL);
CREATE INDEX event_deliveries_pending ON public.event_deliveries USING btree (endpoint_id, account_id, sequence) WHERE (delivered_at IS NULL);

create table events (
  id bigint not null,
  sequence bigint,
  type text not null,
  account_id text,
  data jsonb not null default '{}'::jsonb,
  created_at timestamp with time zone not null default now(),
  xid xid8 not null default pg_current_xact_id()
);
alter table events add constraint events_pkey PRIMARY KEY (id);
alter table events add constraint event_sequence_unique UNIQUE (sequence);
CREATE INDEX events_by_account ON public.events USING btree (account_id, sequence) WHERE (sequence IS NOT NULL);
CREATE INDEX events_unsequenced ON public.events USING btree (id) WHERE (sequence IS NULL);

create table grants (
  id bigint not null,
  account_id text not null,
  source text not null,
  amount bigint not null,
  remaining bigint not null,
  priority integer not null default 0,
  expires_at timestamp with time zone,
  grant_key text not null,
  reference jsonb not null default '{}'::jsonb,
  payment_id bigint,
  created_at timestamp with time zone not null default now(),
  live boolean default (remaining > 0)
);
alter table grants add constraint grant_amount_positive CHECK ((amount > 0));
alter table grants add constraint grant_source CHECK ((source = ANY (ARRAY['subscription'::text, 'trial'::text, 'purchase'::text, 'promo'::text, 'admin'::text, 'rollover'::text, 'recurring'::text])));
alter table grants add constraint priority_range CHECK (((priority >= 0) AND (priority <= 1000)));
alter table grants add constraint remaining_within_amount CHECK (((remaining >= 0) AND (remaining <= amount)));
alter table grants add constraint grant_payment FOREIGN KEY (payment_id) REFERENCES payments(id);
alter table grants add constraint grants_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table grants add constraint grants_pkey PRIMARY KEY (id);
alter table grants add constraint grant_key_unique UNIQUE (account_id, grant_key);
CREATE INDEX grants_by_payment ON public.grants USING btree (payment_id) WHERE (payment_id IS NOT NULL);
CREATE INDEX grants_due_expiry ON public.grants USING btree (expires_at) WHERE (live AND (expires_at IS NOT NULL));
CREATE UNIQUE INDEX grants_one_period_per_plan ON public.grants USING btree (account_id, ((reference ->> 'subscription'::text)), ((reference ->> 'plan'::text)), ((reference ->> 'period_start'::text))) WHERE (grant_key ~~ 'period:%'::text);
CREATE INDEX grants_spend_order ON public.grants USING btree (account_id, priority, expires_at, created_at, id) WHERE live;
CREATE TRIGGER grants_events AFTER INSERT ON public.grants FOR EACH ROW EXECUTE FUNCTION tally_grant_events();

create table holds (
  id bigint not null,
  account_id text not null,
  amount bigint not null,
  status text not null default 'pending'::text,
  captured bigint,
  released bigint,
  grant_ids bigint[] not null,
  grant_credits bigint[] not null,
  expires_at timestamp with time zone not null,
  idempotency_key text not null,
  created_at timestamp with time zone not null default now(),
  resolved_at timestamp with time zone,
  counted_in_spend_limits boolean not null default false,
  meter text,
  quantities jsonb,
  rate_card_id text,
  rate_card_version integer,
  cost numeric
);
alter table holds add constraint hold_amount_positive CHECK (((amount > 0) OR ((meter IS NOT NULL) AND (amount = 0)))) NOT VALID;
alter table holds add constraint hold_resolution CHECK ((((status = 'pending'::text) AND (captured IS NULL) AND (released IS NULL)) OR ((status <> 'pending'::text) AND (captured >= 0) AND (released >= 0) AND ((captured + released) = amount))));
alter table holds add constraint hold_status CHECK ((status = ANY (ARRAY['pending'::text, 'captured'::text, 'voided'::text, 'expired'::text])));
alter table holds add constraint priced_hold CHECK ((((meter IS NULL) AND (quantities IS NULL) AND (rate_card_id IS NULL) AND (rate_card_version IS NULL) AND (cost IS NULL)) OR ((meter IS NOT NULL) AND (quantities IS NOT NULL) AND (rate_card_id IS NOT NULL) AND (rate_card_version IS NOT NULL) AND (cost >= (0)::numeric)))) NOT VALID;
alter table holds add constraint holds_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table holds add constraint holds_pkey PRIMARY KEY (id);
CREATE INDEX holds_due_expiry ON public.holds USING btree (expires_at) WHERE (status = 'pending'::text);
CREATE INDEX holds_pending_by_account ON public.holds USING btree (account_id, expires_at) WHERE (status = 'pending'::text);
CREATE TRIGGER holds_events AFTER UPDATE OF status ON public.holds FOR EACH ROW WHEN (((old.status = 'pending'::text) AND (new.status = 'expired'::text))) EXECUTE FUNCTION tally_hold_events();
CREATE TRIGGER holds_spend_limits AFTER UPDATE OF status ON public.holds FOR EACH ROW WHEN (((old.status = 'pending'::text) AND (new.status <> 'pending'::text) AND (new.released > 0) AND new.counted_in_spend_limits)) EXECUTE FUNCTION tally_spend_limits_give_back();

create table invoice_payment_intents (
  payment_intent text not null,
  invoice_id text not null,
  event_id text not null,
  created_at timestamp with time zone not null default now()
);
alter table invoice_payment_intents add constraint invoice_payment_intents_pkey PRIMARY KEY (payment_intent);
CREATE INDEX invoice_payment_intents_by_invoice ON public.invoice_payment_intents USING btree (invoice_id);

create table invoice_payment_links (
  invoice_id text not null,
  payment_intent text not null,
  event_id text not null,
  created_at timestamp with time zone not null default now()
);
alter table invoice_payment_links add constraint invoice_payment_links_pkey PRIMARY KEY (invoice_id);

create table payment_refunds (
  refund_id text not null,
  payment_id bigint not null,
  credits bigint not null,
  created_at timestamp with time zone not null default now()
);
alter table payment_refunds add constraint refund_credits_not_negative CHECK ((credits >= 0));
alter table payment_refunds add constraint payment_refunds_payment_id_fkey FOREIGN KEY (payment_id) REFERENCES payments(id);
alter table payment_refunds add constraint payment_refunds_pkey PRIMARY KEY (refund_id);

create table payments (
  id bigint not null,
  account_id text not null,
  invoice_id text,
  checkout_session_id text,
  payment_intent text,
  amount_paid bigint not null,
  currency text,
  credits bigint not null default 0,
  clawed_back bigint not null default 0,
  created_at timestamp with time zone not null default now(),
  total bigint,
  prorated_back bigint not null default 0
);
alter table payments add constraint amount_paid_not_negative CHECK ((amount_paid >= 0));
alter table payments add constraint clawback_bounded CHECK (((clawed_back >= 0) AND (credits >= 0) AND (clawed_back <= credits)));
alter table payments add constraint payment_clawbacks_bounded CHECK (((prorated_back >= 0) AND (prorated_back <= credits)));
alter table payments add constraint payments_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table payments add constraint payments_pkey PRIMARY KEY (id);
alter table payments add constraint payments_checkout_session_id_key UNIQUE (checkout_session_id);
alter table payments add constraint payments_invoice_id_key UNIQUE (invoice_id);
alter table payments add constraint payments_payment_intent_key UNIQUE (payment_intent);
CREATE INDEX payments_by_account ON public.payments USING btree (account_id);

create table rate_card_versions (
  rate_card_id text not null,
  version integer not null,
  effective_at timestamp with time zone not null,
  rates jsonb not null,
  source text not null,
  published_at timestamp with time zone not null
);
alter table rate_card_versions add constraint rate_card_version_source CHECK ((source = ANY (ARRAY['catalog'::text, 'admin'::text])));
alter table rate_card_versions add constraint rates_are_decimals CHECK (((jsonb_typeof(rates) = 'object'::text) AND (NOT jsonb_path_exists(rates, '$.*?(@.type() != "object")'::jsonpath)) AND (NOT jsonb_path_exists(rates, '$.*.*?(@.type() != "string" || !(@ like_regex "^(0|[1-9][0-9]{0,14})([.][0-9]{1,12})?$"))'::jsonpath))));
alter table rate_card_versions add constraint version_positive CHECK ((version >= 1));
alter table rate_card_versions add constraint rate_card_versions_rate_card_id_fkey FOREIGN KEY (rate_card_id) REFERENCES rate_cards(id);
alter table rate_card_versions add constraint rate_card_versions_pkey PRIMARY KEY (rate_card_id, version);
CREATE INDEX rate_card_versions_in_effect ON public.rate_card_versions USING btree (rate_card_id, effective_at DESC, version DESC);
CREATE TRIGGER rate_card_versions_append_only BEFORE DELETE OR UPDATE ON public.rate_card_versions FOR EACH ROW EXECUTE FUNCTION tally_refuse_rate_card_version_change();
CREATE TRIGGER rate_card_versions_no_truncate BEFORE TRUNCATE ON public.rate_card_versions FOR EACH STATEMENT EXECUTE FUNCTION tally_refuse_rate_card_version_change();

create table rate_cards (
  id text not null,
  is_default boolean not null default false,
  created_at timestamp with time zone not null default now()
);
alter table rate_cards add constraint rate_card_id_format CHECK ((id ~ '^[A-Za-z0-9_.-]{1,64}$'::text));
alter table rate_cards add constraint rate_cards_pkey PRIMARY KEY (id);
CREATE UNIQUE INDEX rate_cards_one_default ON public.rate_cards USING btree (is_default) WHERE is_default;

create table reconciliation_runs (
  id bigint not null,
  started_at timestamp with time zone not null default now(),
  finished_at timestamp with time zone,
  trigger text not null,
  with_stripe boolean not null default false,
  status text not null default 'running'::text,
  finding_count integer,
  findings jsonb not null default '[]'::jsonb,
  summary jsonb not null default '{}'::jsonb,
  error text
);
alter table reconciliation_runs add constraint run_status CHECK ((status = ANY (ARRAY['running'::text, 'done'::text, 'failed'::text])));
alter table reconciliation_runs add constraint run_trigger CHECK ((trigger = ANY (ARRAY['cli'::text, 'api'::text, 'schedule'::text])));
alter table reconciliation_runs add constraint reconciliation_runs_pkey PRIMARY KEY (id);
CREATE INDEX reconciliation_runs_recent ON public.reconciliation_runs USING btree (started_at DESC);

create table request_keys (
  key text not null,
  account_id text not null,
  operation text not null,
  payload_hash text not null,
  status_code integer not null,
  response jsonb not null,
  created_at timestamp with time zone not null default now()
);
alter table request_keys add constraint request_keys_pkey PRIMARY KEY (account_id, key);

create table spend_limits (
  account_id text not null,
  per_day bigint,
  per_month bigint,
  day date not null,
  spent_day bigint not null,
  month date not null,
  spent_month bigint not null,
  day_reached date,
  month_reached date,
  updated_at timestamp with time zone not null default now()
);
alter table spend_limits add constraint per_day_range CHECK (((per_day >= 0) AND (per_day <= '9007199254740991'::bigint)));
alter table spend_limits add constraint per_month_range CHECK (((per_month >= 0) AND (per_month <= '9007199254740991'::bigint)));
alter table spend_limits add constraint some_limit CHECK (((per_day IS NOT NULL) OR (per_month IS NOT NULL)));
alter table spend_limits add constraint spent_day_range CHECK (((spent_day >= 0) AND (spent_day <= '9007199254740991'::bigint)));
alter table spend_limits add constraint spent_month_range CHECK (((spent_month >= 0) AND (spent_month <= '9007199254740991'::bigint)));
alter table spend_limits add constraint spend_limits_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table spend_limits add constraint spend_limits_pkey PRIMARY KEY (account_id);

create table subscriptions (
  id text not null,
  account_id text not null,
  customer_id text,
  status text not null,
  price_id text,
  plan_id text,
  billing_interval text,
  current_period_start timestamp with time zone,
  current_period_end timestamp with time zone,
  cancel_at_period_end boolean not null default false,
  trial_end timestamp with time zone,
  event_created timestamp with time zone not null,
  event_id text not null,
  updated_at timestamp with time zone not null default now(),
  quantity integer not null default 1,
  ended_at timestamp with time zone,
  plan_ids text[]
);
alter table subscriptions add constraint subscription_quantity_positive CHECK ((quantity >= 0));
alter table subscriptions add constraint subscriptions_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table subscriptions add constraint subscriptions_pkey PRIMARY KEY (id);
CREATE INDEX subscriptions_by_account ON public.subscriptions USING btree (account_id);
CREATE TRIGGER subscriptions_insert_entitlements AFTER INSERT ON public.subscriptions FOR EACH ROW EXECUTE FUNCTION tally_entitlement_events();
CREATE TRIGGER subscriptions_insert_events AFTER INSERT ON public.subscriptions FOR EACH ROW EXECUTE FUNCTION tally_subscription_events();
CREATE TRIGGER subscriptions_update_entitlements AFTER UPDATE ON public.subscriptions FOR EACH ROW WHEN (((old.account_id IS DISTINCT FROM new.account_id) OR (old.status IS DISTINCT FROM new.status) OR (old.plan_id IS DISTINCT FROM new.plan_id) OR (old.plan_ids IS DISTINCT FROM new.plan_ids))) EXECUTE FUNCTION tally_entitlement_events();
CREATE TRIGGER subscriptions_update_events AFTER UPDATE ON public.subscriptions FOR EACH ROW WHEN (((((((((old.account_id IS DISTINCT FROM new.account_id) OR (old.status IS DISTINCT FROM new.status)) OR (old.plan_id IS DISTINCT FROM new.plan_id)) OR (old.billing_interval IS DISTINCT FROM new.billing_interval)) OR (old.current_period_start IS DISTINCT FROM new.current_period_start)) OR (old.current_period_end IS DISTINCT FROM new.current_period_end)) OR (old.cancel_at_period_end IS DISTINCT FROM new.cancel_at_period_end)) OR (old.trial_end IS DISTINCT FROM new.trial_end))) EXECUTE FUNCTION tally_subscription_events();

create table tally_secrets (
  name text not null,
  value text not null,
  created_at timestamp with time zone not null default now()
);
alter table tally_secrets add constraint tally_secrets_pkey PRIMARY KEY (name);

create table top_ups (
  id bigint not null,
  account_id text not null,
  number integer not null,
  pack_id text not null,
  status text not null default 'pending'::text,
  payment_intent text,
  attempts integer not null default 0,
  next_attempt_at timestamp with time zone not null default '-infinity'::timestamp with time zone,
  failure_code text,
  last_error text,
  created_at timestamp with time zone not null default now(),
  resolved_at timestamp with time zone
);
alter table top_ups add constraint top_up_status CHECK ((status = ANY (ARRAY['pending'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])));
alter table top_ups add constraint top_ups_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table top_ups add constraint top_ups_pkey PRIMARY KEY (id);
alter table top_ups add constraint top_up_number_unique UNIQUE (account_id, number);
alter table top_ups add constraint top_up_payment_intent_unique UNIQUE (payment_intent);
CREATE INDEX top_ups_due ON public.top_ups USING btree (next_attempt_at) WHERE (status = 'pending'::text);
CREATE UNIQUE INDEX top_ups_one_in_flight ON public.top_ups USING btree (account_id) WHERE (status = 'pending'::text);

create table trial_claims (
  kind text not null,
  value_hash text not null,
  account_id text not null,
  subscription_id text,
  created_at timestamp with time zone not null default now()
);
alter table trial_claims add constraint claim_kind CHECK ((kind = ANY (ARRAY['account'::text, 'email'::text, 'device'::text, 'card'::text, 'payment_method'::text])));
alter table trial_claims add constraint trial_claims_pkey PRIMARY KEY (kind, value_hash);

create table trial_refusals (
  subscription_id text not null,
  account_id text not null,
  reason text not null,
  created_at timestamp with time zone not null default now(),
  cancelled_at timestamp with time zone,
  cancel_attempts integer not null default 0,
  last_error text
);
alter table trial_refusals add constraint trial_refusals_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table trial_refusals add constraint trial_refusals_pkey PRIMARY KEY (subscription_id);
CREATE INDEX trial_refusals_to_cancel ON public.trial_refusals USING btree (created_at) WHERE (cancelled_at IS NULL);
CREATE TRIGGER trial_refusals_events AFTER INSERT ON public.trial_refusals FOR EACH ROW EXECUTE FUNCTION tally_trial_refusal_events();

create table webhook_endpoints (
  id bigint not null,
  url text not null,
  secret text not null,
  event_types text[],
  status text not null default 'enabled'::text,
  disabled_at timestamp with time zone,
  disabled_reason text,
  created_at timestamp with time zone not null default now()
);
alter table webhook_endpoints add constraint endpoint_status CHECK ((status = ANY (ARRAY['enabled'::text, 'disabled'::text])));
alter table webhook_endpoints add constraint endpoint_url_length CHECK ((char_length(url) <= 2048));
alter table webhook_endpoints add constraint webhook_endpoints_pkey PRIMARY KEY (id);

create table webhook_events (
  id text not null,
  type text not null,
  api_version text,
  created timestamp with time zone not null,
  payload jsonb not null,
  received_at timestamp with time zone not null default now(),
  status text not null default 'pending'::text,
  attempts integer not null default 0,
  next_attempt_at timestamp with time zone not null default now(),
  last_error text,
  processed_at timestamp with time zone,
  account_id text,
  ignored_reason text,
  raw_body text
);
alter table webhook_events add constraint attempts_bounded CHECK (((attempts >= 0) AND (attempts <= 100)));
alter table webhook_events add constraint webhook_status CHECK ((status = ANY (ARRAY['pending'::text, 'processed'::text, 'ignored'::text, 'failed'::text])));
alter table webhook_events add constraint webhook_events_pkey PRIMARY KEY (id);
CREATE INDEX webhook_events_by_status ON public.webhook_events USING btree (status, received_at DESC);
CREATE INDEX webhook_events_due ON public.webhook_events USING btree (next_attempt_at) WHERE (status = 'pending'::text);
CREATE INDEX webhook_events_received_brin ON public.webhook_events USING brin (received_at);

create table yearly_schedule (
  subscription_id text not null,
  month_start timestamp with time zone not null,
  account_id text not null,
  month_end timestamp with time zone not null,
  plan_id text not null,
  credits bigint not null,
  payment_id bigint,
  granted_at timestamp with time zone,
  outcome text,
  line_key text not null default 'period'::text,
  line_start timestamp with time zone not null,
  attempts integer not null default 0,
  last_error text,
  subscription_item text
);
alter table yearly_schedule add constraint schedule_attempts_bounded CHECK (((attempts >= 0) AND (attempts <= 100)));
alter table yearly_schedule add constraint schedule_credits_not_zero CHECK ((credits <> 0));
alter table yearly_schedule add constraint schedule_outcome CHECK ((outcome = ANY (ARRAY['granted'::text, 'skipped'::text, 'netted'::text, 'failed'::text])));
alter table yearly_schedule add constraint yearly_schedule_account_id_fkey FOREIGN KEY (account_id) REFERENCES accounts(id);
alter table yearly_schedule add constraint yearly_schedule_payment_id_fkey FOREIGN KEY (payment_id) REFERENCES payments(id);
alter table yearly_schedule add constraint yearly_schedule_pkey PRIMARY KEY (subscription_id, month_start, line_key);
CREATE INDEX yearly_schedule_due ON public.yearly_schedule USING btree (month_start) WHERE (granted_at IS NULL);

CREATE OR REPLACE FUNCTION public.tally_account_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
declare
  v_threshold bigint;
begin
  if new.available < old.available then
    for v_threshold in
      select distinct t from unnest(array[new.low_balance_threshold, new.top_up_threshold]) as t
      where new.available < t and old.available >= t
      order by t desc
    loop
      perform tally_event('balance.low', new.id, jsonb_build_object('available', new.available,
        'threshold', v_threshold, 'previous_available', old.available), new.updated_at);
    end loop;
  end if;
  if old.available > 0 and new.available = 0 then
    perform tally_event('balance.depleted', new.id, jsonb_build_object('available', 0, 'debt', new.debt), new.updated_at);
  end if;
  if old.debt = 0 and new.debt > 0 then
    perform tally_event('account.in_debt', new.id, jsonb_build_object('debt', new.debt), new.updated_at);
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_account_plans(p_accounts text[])
 RETURNS TABLE(account_id text, plan_id text, source text, rate_card_id text, all_meters boolean, meters text[])
 LANGUAGE sql
 STABLE
AS $function$
  with item as (select * from tally_plan_items(p_accounts))
  select a.account_id, top.plan_id, coalesce(top.source, 'none'),
    coalesce(top.rate_card_id, (select id from rate_cards where is_default)),
    coalesce(m.all_meters, true), coalesce(m.meters, '{}')
  from unnest(p_accounts) as a(account_id)
  left join item top on top.account_id = a.account_id and top.rank = 1
  left join lateral (
    select bool_or(i.entitlements is null or i.entitlements->'meters' = '"all"'::jsonb) as all_meters,
      array_agg(distinct x.meter) filter (where x.meter is not null) as meters
    from item i
    left join lateral jsonb_array_elements_text(
      case when jsonb_typeof(i.entitlements->'meters') = 'array' then i.entitlements->'meters' end) as x(meter) on true
    where i.account_id = a.account_id) m on true
$function$;

CREATE OR REPLACE FUNCTION public.tally_account_rate_card(p_account text)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
  select rate_card_id from tally_account_rate_cards(array[p_account])
$function$;

CREATE OR REPLACE FUNCTION public.tally_account_rate_cards(p_accounts text[])
 RETURNS TABLE(account_id text, rate_card_id text)
 LANGUAGE sql
 STABLE
AS $function$
  select p.account_id, p.rate_card_id from tally_account_plans(p_accounts) p
$function$;

CREATE OR REPLACE FUNCTION public.tally_add_grant(p_account text, p_source text, p_amount bigint, p_priority integer, p_expires_at timestamp with time zone, p_grant_key text, p_entry_kind text, p_reference jsonb, p_actor text, p_reason text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_grant grants;
  v_repay bigint;
  v_net bigint;
  v_entry entries;
begin
  select * into v_grant from grants where account_id = p_account and grant_key = p_grant_key;
  if found then
    return jsonb_build_object('created', false, 'grant', tally_grant_json(v_grant));
  end if;
  select least(debt, p_amount) into v_repay from accounts where id = p_account;
  insert into grants (account_id, source, amount, remaining, priority, expires_at, grant_key,
    reference, created_at)
  values (p_account, p_source, p_amount, p_amount - v_repay, p_priority, p_expires_at, p_grant_key,
    p_reference, p_now)
  returning * into v_grant;
  update accounts set available = available + (p_amount - v_repay), debt = debt - v_repay,
    updated_at = p_now where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, reason, created_at)
  values (p_account, p_entry_kind, p_amount, v_net, array[v_grant.id], array[p_amount - v_repay],
    p_grant_key, p_reference || jsonb_build_object('debt_repaid', v_repay), p_actor, p_reason, p_now)
  returning * into v_entry;
  -- A grant that lands on an expiry already past counts for nothing.
  perform tally_expire_due(p_account, p_now);
  return jsonb_build_object('created', true, 'grant', tally_grant_json(v_grant),
    'entry', tally_entry_json(v_entry));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_adjust(p_account text, p_amount bigint, p_key text, p_hash text, p_reason text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_before accounts;
  v_account accounts;
  v_take record;
  v_entry entries;
begin
  v_outcome := tally_open(p_account, p_key, 'adjustment', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  select * into v_before from accounts where id = p_account;
  if v_before.available < -p_amount then
    return tally_remember(p_key, p_account, 'adjustment', p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_before.available)), v_now);
  end if;
  if p_amount > 0 then
    perform tally_add_grant(p_account, 'admin', p_amount, 0, null, 'request:' || p_key,
      'adjustment', '{}'::jsonb, 'admin', p_reason, v_now);
    select * into v_entry from entries
      where account_id = p_account and idempotency_key = 'request:' || p_key;
  else
    select * into v_take from tally_take(p_account, -p_amount, v_now);
    update accounts set available = available + p_amount, updated_at = v_now
      where id = p_account returning * into v_account;
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
      idempotency_key, actor, reason, created_at)
    values (p_account, 'adjustment', p_amount, v_account.available - v_account.debt,
      v_take.grant_ids, v_take.grant_credits, 'request:' || p_key, 'admin', p_reason, v_now)
    returning * into v_entry;
  end if;
  select * into v_account from accounts where id = p_account;
  insert into audit_log (account_id, actor, action, reason, before, after, created_at)
  values (p_account, 'admin', 'adjustment', p_reason,
    jsonb_build_object('available', v_before.available, 'debt', v_before.debt),
    jsonb_build_object('available', v_account.available, 'debt', v_account.debt), v_now);
  return tally_remember(p_key, p_account, 'adjustment', p_hash, 201, tally_entry_json(v_entry), v_now);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_admin_grant(p_account text, p_amount bigint, p_source text, p_priority integer, p_expires_at timestamp with time zone, p_reference jsonb, p_key text, p_hash text, p_reason text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_added jsonb;
begin
  v_outcome := tally_open(p_account, p_key, 'grant', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  v_added := tally_add_grant(p_account, p_source, p_amount, p_priority, p_expires_at,
    'request:' || p_key, 'grant', p_reference, 'admin', p_reason, v_now);
  insert into audit_log (account_id, actor, action, reason, before, after, created_at)
  values (p_account, 'admin', 'grant', p_reason, null, v_added->'grant', v_now);
  return tally_remember(p_key, p_account, 'grant', p_hash, 201, v_added->'grant', v_now);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_balance(p_account text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_balance jsonb;
begin
  if tally_catalog_recurs() and exists (select 1 from tally_recurring_due(p_account, v_now)) then
    perform tally_lock_account(p_account, v_now);
    perform tally_give_recurring(p_account, v_now);
  end if;
  select jsonb_build_object('account_id', a.id,
      'available', a.available - coalesce((select sum(g.remaining) from grants g where g.account_id = a.id
        and g.live and g.expires_at <= v_now), 0)::bigint,
      'held', a.held, 'debt', a.debt)
    into v_balance from accounts a where a.id = p_account;
  if v_balance is null then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  return v_balance;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_batch_entitlements(p_accounts text[], p_account_ids text[], p_meters text[], p_now timestamp with time zone)
 RETURNS text[]
 LANGUAGE plpgsql
AS $function$
declare
  v_account text;
  v_per_event text[] := tally_unentitled_accounts(p_account_ids, p_meters);
begin
  if tally_catalog_recurs() then
    foreach v_account in array p_accounts loop
      if not v_account = any(v_per_event) then
        perform tally_give_recurring(v_account, p_now);
      end if;
    end loop;
  end if;
  return v_per_event;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_capture(p_hold_id bigint, p_amount bigint, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_amount bigint := coalesce(p_amount, v_hold.amount);
  v_available bigint;
begin
  -- A priced hold is captured by quantities; without any, by the quantities it held.
  if v_hold.meter is not null then
    if p_amount is not null then
      raise exception 'hold_% is priced by meter %: capture it with quantities, not amount', p_hold_id, v_hold.meter
        using errcode = 'TP400', detail = 'amount';
    end if;
    return tally_priced_capture(p_hold_id, null, p_actor, v_now);
  end if;
  if v_amount > v_hold.amount then
    raise exception 'capture of % exceeds the hold of %', v_amount, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, v_amount, 'captured', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', v_amount, 'released', v_hold.amount - v_amount,
    'available', v_available);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_catalog_recurs()
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
  select exists (select 1 from catalog_plans where recurring_grants <> '[]'::jsonb)
$function$;

CREATE OR REPLACE FUNCTION public.tally_clawback(p_account text, p_credits bigint, p_key text, p_payment_id bigint, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
AS $function$
  select tally_clawback_from(p_account, p_credits, p_key,
    (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id),
    p_reference, p_now)
$function$;

CREATE OR REPLACE FUNCTION public.tally_clawback_from(p_account text, p_credits bigint, p_key text, p_preferred bigint[], p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_available bigint;
  v_taken bigint;
  v_take record;
  v_net bigint;
  v_entry entries;
begin
  select * into v_entry from entries where account_id = p_account and idempotency_key = p_key;
  if found then
    return jsonb_build_object('created', false, 'entry', tally_entry_json(v_entry));
  end if;
  select available into v_available from accounts where id = p_account;
  v_taken := least(v_available, p_credits);
  if v_taken > 0 then
    select * into v_take from tally_take_from(p_account, v_taken, v_now, p_preferred);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - v_taken, debt = debt + (p_credits - v_taken),
    updated_at = v_now where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'clawback', -p_credits, v_net, v_take.grant_ids, v_take.grant_credits, p_key,
      p_reference || jsonb_build_object('debt_created', p_credits - v_taken), 'stripe', v_now)
  returning * into v_entry;
  return jsonb_build_object('created', true, 'entry', tally_entry_json(v_entry));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_entitlement_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
declare
  v_after jsonb := tally_entitlements_state(new.account_id);
  v_before jsonb;
begin
  select entitlements into v_before from account_plans where account_id = new.account_id;
  if not found then
    -- The state of an account without a subscription: the empty id, which no account has (ids
    -- are 1 to 128 characters), is on the free plan or on none.
    v_before := tally_entitlements_state('');
  end if;
  if v_before is distinct from v_after then
    insert into account_plans (account_id, plan_id, source, entitlements, updated_at)
    values (new.account_id, v_after->>'plan_id', v_after->>'source', v_after, now())
    on conflict (account_id) do update set plan_id = excluded.plan_id, source = excluded.source,
      entitlements = excluded.entitlements, updated_at = excluded.updated_at;
    perform tally_event('entitlements.changed', new.account_id, v_after || jsonb_build_object('previous',
      jsonb_build_object('plan_id', v_before->'plan_id', 'source', v_before->'source')), null);
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_entitlements_json(p_account text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_card text;
  v_version rate_card_versions;
begin
  perform 1 from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  select rate_card_id into v_card from tally_account_plans(array[p_account]);
  if v_card is not null then
    v_version := tally_rate_card_in_effect(v_card, coalesce(p_now, now()));
  end if;
  return tally_entitlements_state(p_account) || jsonb_build_object('rate_card',
    case when v_version.rate_card_id is null then null
      else jsonb_build_object('id', v_version.rate_card_id, 'version', v_version.version) end);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_entitlements_state(p_account text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select jsonb_build_object('plan_id', p.plan_id, 'source', p.source,
    'meters', case when p.all_meters then '"all"'::jsonb else to_jsonb(array(select unnest(p.meters) order by 1)) end,
    'features', tally_features_union(p_account),
    'recurring_grants', coalesce((select jsonb_agg(jsonb_build_object('plan_id', i.plan_id) || r.value
        order by i.rank, r.value->>'every')
      from tally_plan_items(array[p_account]) i cross join lateral jsonb_array_elements(i.recurring_grants) r
      where i.plan_id is not null), '[]'::jsonb))
  from tally_account_plans(array[p_account]) p
$function$;

CREATE OR REPLACE FUNCTION public.tally_entry_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  if new.kind = 'clawback' then
    perform tally_event('credits.clawed_back', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'credits', -new.amount, 'idempotency_key', new.idempotency_key,
      'debt_created', coalesce((new.reference->>'debt_created')::bigint, 0)), new.created_at);
  elsif new.kind = 'restore' then
    perform tally_event('credits.restored', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'credits', new.amount, 'idempotency_key', new.idempotency_key), new.created_at);
  elsif new.kind = 'expire' then
    perform tally_event('grant.expired', new.account_id, jsonb_build_object('entry_id', 'entry_' || new.id,
      'grant_id', new.reference->>'grant_id', 'credits', -new.amount), new.created_at);
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_entry_json(e entries)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select jsonb_build_object('id', 'entry_' || e.id, 'kind', e.kind, 'amount', e.amount,
    'balance_after', e.balance_after,
    'grant_ids', (select coalesce(jsonb_agg('grant_' || g order by n), '[]'::jsonb)
                  from unnest(e.grant_ids) with ordinality as u(g, n)),
    'idempotency_key', e.idempotency_key, 'reference', e.reference, 'actor', e.actor,
    'reason', e.reason, 'created_at', tally_iso(e.created_at))
  || case when e.meter is null then '{}'::jsonb
     else jsonb_build_object('meter', e.meter, 'quantities', e.quantities,
       'rate_card', jsonb_build_object('id', e.rate_card_id, 'version', e.rate_card_version),
       'cost', trim_scale(e.cost)::text, 'carry_after', trim_scale(e.carry_after)::text) end
$function$;

CREATE OR REPLACE FUNCTION public.tally_error(p_code text, p_message text, p_details jsonb DEFAULT '{}'::jsonb)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
RETURN jsonb_build_object('error', (jsonb_build_object('code', p_code, 'message', p_message) || p_details));

CREATE OR REPLACE FUNCTION public.tally_event(p_type text, p_account text, p_data jsonb, p_at timestamp with time zone)
 RETURNS void
 LANGUAGE sql
AS $function$
  insert into events (type, account_id, data, created_at) values (p_type, p_account, p_data, coalesce(p_at, now()));
$function$;

CREATE OR REPLACE FUNCTION public.tally_expire_due(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  g record;
begin
  for g in
    select id from grants where account_id = p_account and live and expires_at <= p_now order by id
  loop
    perform tally_expire_remaining(g.id, p_now);
  end loop;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_expire_grant(p_grant_id bigint, p_now timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
declare
  v_account text;
begin
  perform tally_expire_remaining(p_grant_id, coalesce(p_now, now()));
  select account_id into v_account from grants where id = p_grant_id;
  return (select coalesce(-sum(amount), 0) from entries
          where account_id = v_account and idempotency_key = 'expire:grant_' || p_grant_id);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_expire_remaining(p_grant_id bigint, p_now timestamp with time zone)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
declare
  v_grant grants;
  v_entry_id bigint;
  v_key text;
  v_net bigint;
begin
  select * into v_grant from grants where id = p_grant_id;
  if not found or v_grant.remaining = 0 then
    return 0;
  end if;
  v_entry_id := nextval(pg_get_serial_sequence('entries', 'id'));
  v_key := 'expire:grant_' || v_grant.id;
  if exists (select 1 from entries where account_id = v_grant.account_id and idempotency_key = v_key) then
    v_key := v_key || ':entry_' || v_entry_id;
  end if;
  update grants set remaining = 0 where id = v_grant.id;
  update accounts set available = available - v_grant.remaining, updated_at = p_now
    where id = v_grant.account_id returning available - debt into v_net;
  insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at) overriding system value
  values (v_entry_id, v_grant.account_id, 'expire', -v_grant.remaining, v_net, array[v_grant.id],
    array[-v_grant.remaining], v_key, jsonb_build_object('grant_id', 'grant_' || v_grant.id),
    'system', p_now);
  return v_grant.remaining;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_features_union(p_account text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select coalesce(jsonb_object_agg(f.name, f.value), '{}'::jsonb) from (
    select x.key as name,
      case when bool_and(jsonb_typeof(x.value) = 'number')
          then to_jsonb(max((x.value #>> '{}')::numeric) filter (where jsonb_typeof(x.value) = 'number'))
        when bool_and(jsonb_typeof(x.value) = 'boolean')
          then to_jsonb(bool_or((x.value #>> '{}')::boolean) filter (where jsonb_typeof(x.value) = 'boolean'))
        else (array_agg(x.value order by i.rank))[1] end as value
    from tally_plan_items(array[p_account]) i
    cross join lateral jsonb_each(coalesce(i.entitlements->'features', '{}'::jsonb)) x
    group by x.key) f
$function$;

CREATE OR REPLACE FUNCTION public.tally_give_recurring(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  v_due record;
begin
  if not tally_catalog_recurs() then
    return;
  end if;
  for v_due in select * from tally_recurring_due(p_account, p_now) order by grant_key loop
    perform tally_add_grant(p_account, 'recurring', v_due.credits, 0, v_due.period_end, v_due.grant_key, 'grant',
      jsonb_build_object('plan', v_due.plan_id, 'every', v_due.every, 'period_start', to_char(v_due.period_start, 'YYYY-MM-DD')),
      'system', null, p_now);
  end loop;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_grant_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  perform tally_event('grant.created', new.account_id, jsonb_build_object('grant_id', 'grant_' || new.id,
    'source', new.source, 'amount', new.amount, 'remaining', new.remaining,
    'expires_at', tally_iso(new.expires_at), 'grant_key', new.grant_key), new.created_at);
  if new.source = 'trial' then
    perform tally_event('trial.granted', new.account_id, jsonb_build_object('grant_id', 'grant_' || new.id,
      'credits', new.amount, 'expires_at', tally_iso(new.expires_at)), new.created_at);
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_grant_expired(p_account text, p_grant_id bigint, p_now timestamp with time zone)
 RETURNS boolean
 LANGUAGE sql
 STABLE
RETURN ((EXISTS (SELECT 1 FROM grants WHERE ((grants.id = tally_grant_expired.p_grant_id) AND (grants.expires_at <= tally_grant_expired.p_now)))) OR (EXISTS (SELECT 1 FROM entries WHERE ((entries.account_id = tally_grant_expired.p_account) AND (entries.idempotency_key = ('expire:grant_'::text || tally_grant_expired.p_grant_id))))));

CREATE OR REPLACE FUNCTION public.tally_grant_json(g grants)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
RETURN jsonb_build_object('id', ('grant_'::text || (g).id), 'source', (g).source, 'amount', (g).amount, 'remaining', (g).remaining, 'priority', (g).priority, 'expires_at', tally_iso((g).expires_at), 'created_at', tally_iso((g).created_at), 'reference', (g).reference);

CREATE OR REPLACE FUNCTION public.tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer, p_key text, p_hash text, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
AS $function$
  select tally_hold(p_account, p_amount, p_expires_in_seconds, p_key, p_hash, p_actor, p_now, null)
$function$;

CREATE OR REPLACE FUNCTION public.tally_hold(p_account text, p_amount bigint, p_expires_in_seconds integer, p_key text, p_hash text, p_actor text, p_now timestamp with time zone, p_priced jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_account accounts;
  v_take record;
  v_hold holds;
  v_net bigint;
begin
  v_outcome := tally_open_spend(p_account, p_amount, p_key, 'hold', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  -- A hold of 0 credits (a priced one whose cost is 0) takes from no grant.
  if p_amount > 0 then
    select * into v_take from tally_take(p_account, p_amount, v_now);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - p_amount, held = held + p_amount, updated_at = v_now
    where id = p_account returning * into v_account;
  insert into holds (account_id, amount, grant_ids, grant_credits, expires_at, idempotency_key, created_at,
    counted_in_spend_limits, meter, quantities, rate_card_id, rate_card_version, cost)
  values (p_account, p_amount, v_take.grant_ids, v_take.grant_credits,
    v_now + make_interval(secs => p_expires_in_seconds), p_key, v_now, v_account.spend_limited,
    p_priced->>'meter', p_priced->'quantities', p_priced->>'rate_card_id',
    (p_priced->>'rate_card_version')::integer, (p_priced->>'cost')::numeric)
  returning * into v_hold;
  v_net := v_account.available - v_account.debt;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
    idempotency_key, reference, actor, created_at, meter, quantities, rate_card_id, rate_card_version, cost)
  values (p_account, 'hold', -p_amount, v_net, v_take.grant_ids, v_take.grant_credits, v_hold.id,
    'request:' || p_key, jsonb_build_object('hold_id', 'hold_' || v_hold.id), p_actor, v_now,
    v_hold.meter, v_hold.quantities, v_hold.rate_card_id, v_hold.rate_card_version, v_hold.cost);
  -- As a usage: a hold that leaves the account below its auto top-up threshold asks for a top-up.
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return tally_remember(p_key, p_account, 'hold', p_hash, 201,
    jsonb_build_object('hold_id', 'hold_' || v_hold.id, 'amount', p_amount,
      'expires_at', tally_iso(v_hold.expires_at), 'available', v_account.available,
      'replayed', false) || tally_priced_answer(v_hold.cost, v_hold.rate_card_id, v_hold.rate_card_version), v_now);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_hold_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  -- A priced hold says what it held: its meter, the quantities, their cost and the version.
  perform tally_event('hold.expired', new.account_id, jsonb_build_object('hold_id', 'hold_' || new.id,
    'amount', new.amount, 'released', new.released)
    || case when new.meter is null then '{}'::jsonb
       else jsonb_build_object('meter', new.meter, 'quantities', new.quantities) end
    || tally_priced_answer(new.cost, new.rate_card_id, new.rate_card_version), new.resolved_at);
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_iso(p_time timestamp with time zone)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE
RETURN to_char((p_time AT TIME ZONE 'UTC'::text), 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'::text);

CREATE OR REPLACE FUNCTION public.tally_lock_account(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  perform 1 from accounts where id = p_account for update;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  perform tally_settle(p_account, coalesce(p_now, now()));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_lock_pending_hold(p_hold_id bigint, p_now timestamp with time zone)
 RETURNS holds
 LANGUAGE plpgsql
AS $function$
declare
  v_account text;
  v_hold holds;
begin
  select account_id into v_account from holds where id = p_hold_id;
  if not found then
    raise exception 'no hold with id hold_%', p_hold_id using errcode = 'TH404';
  end if;
  perform 1 from accounts where id = v_account for update;
  select * into v_hold from holds where id = p_hold_id for update;
  if v_hold.status <> 'pending' then
    raise exception 'hold is %', v_hold.status using errcode = 'TH409', detail = v_hold.status;
  end if;
  if v_hold.expires_at <= p_now then
    raise exception 'hold is expired' using errcode = 'TH409', detail = 'expired';
  end if;
  return v_hold;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_meter_refusal(p_account text, p_meter text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_plan record;
begin
  if p_meter is null or not tally_meters_restricted() then
    return null;
  end if;
  select * into v_plan from tally_account_plans(array[p_account]);
  if v_plan.all_meters or p_meter = any(v_plan.meters) then
    return null;
  end if;
  return tally_error('meter_not_entitled',
    'meter ' || p_meter || ' is not included in ' || coalesce('plan ' || v_plan.plan_id, 'the account''s plan'),
    jsonb_build_object('meter', p_meter, 'plan_id', v_plan.plan_id));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_meters_restricted()
 RETURNS boolean
 LANGUAGE sql
 STABLE
AS $function$
  select exists (select 1 from catalog_plans where jsonb_typeof(entitlements->'meters') = 'array')
$function$;

CREATE OR REPLACE FUNCTION public.tally_open(p_account text, p_key text, p_operation text, p_hash text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_outcome jsonb := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform 1 from accounts where id = p_account for update;
  if not found then
    return jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || p_account));
  end if;
  v_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform tally_settle(p_account, p_now);
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_open_priced(p_account text, p_key text, p_operation text, p_hash text, OUT p_outcome jsonb, OUT p_carry numeric)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
begin
  p_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
  if p_outcome is not null then
    return;
  end if;
  select carry into p_carry from accounts where id = p_account for update;
  if not found then
    p_outcome := jsonb_build_object('status', 404, 'body', tally_error('account_not_found', 'no account with id ' || p_account));
    return;
  end if;
  -- A racing request under the same key may have committed before the lock was ours.
  p_outcome := tally_prior_outcome(p_account, p_key, p_operation, p_hash);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_open_spend(p_account text, p_amount bigint, p_key text, p_operation text, p_hash text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_outcome jsonb := tally_open(p_account, p_key, p_operation, p_hash, p_now);
  v_available bigint;
  v_limited boolean;
begin
  if v_outcome is not null then
    return v_outcome;
  end if;
  perform tally_give_recurring(p_account, p_now);
  select available, spend_limited into v_available, v_limited from accounts where id = p_account;
  if v_available < p_amount then
    return tally_remember(p_key, p_account, p_operation, p_hash, 402,
      tally_error('insufficient_credits', 'not enough credits available',
        jsonb_build_object('available', v_available)), p_now);
  end if;
  -- A spend of 0 credits (a priced spend whose cost the carry absorbs) passes no limit.
  if v_limited and p_amount > 0 then
    v_outcome := tally_spend_limits_take(p_account, p_amount, p_now);
    if v_outcome is not null then
      return tally_remember(p_key, p_account, p_operation, p_hash, 402, v_outcome, p_now);
    end if;
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_plan_items(p_accounts text[])
 RETURNS TABLE(account_id text, plan_id text, source text, rate_card_id text, entitlements jsonb, recurring_grants jsonb, rank bigint)
 LANGUAGE sql
 STABLE
AS $function$
  with item as (
    select a.account_id, i.plan_id, case when s.status = 'trialing' then 'trial' else 'subscription' end as source,
      p.rate_card_id, p.entitlements, coalesce(p.recurring_grants, '[]'::jsonb) as recurring_grants,
      row_number() over (partition by a.account_id
        order by coalesce(p.credits_per_month, 0) desc, s.event_created desc, s.id, i.plan_id) as rank
    from unnest(p_accounts) as a(account_id)
    join subscriptions s on s.account_id = a.account_id and s.status in ('active', 'trialing', 'past_due')
    cross join lateral unnest(coalesce(nullif(s.plan_ids, '{}'), array[s.plan_id])) as i(plan_id)
    left join catalog_plans p on p.id = i.plan_id
  )
  select * from item
  union all
  select a.account_id, f.id, 'free', f.rate_card_id, f.entitlements, f.recurring_grants, 1
  from unnest(p_accounts) as a(account_id)
  join catalog_plans f on f.free
  where not exists (select 1 from item i where i.account_id = a.account_id)
$function$;

CREATE OR REPLACE FUNCTION public.tally_price(p_rates jsonb, p_meter text, p_quantities jsonb)
 RETURNS numeric
 LANGUAGE plpgsql
 IMMUTABLE
AS $function$
declare
  v_rates jsonb := p_rates -> p_meter;
  v_cost numeric := 0;
  v_quantity record;
begin
  if v_rates is null then
    raise exception 'the rate card prices no meter %', p_meter using errcode = 'TP404', detail = p_meter;
  end if;
  if jsonb_typeof(p_quantities) is distinct from 'object' then
    raise exception 'quantities must be an object' using errcode = 'TP400', detail = 'quantities';
  end if;
  for v_quantity in select key, value from jsonb_each(p_quantities) loop
    if not v_rates ? v_quantity.key then
      raise exception 'meter % has no dimension %', p_meter, v_quantity.key
        using errcode = 'TP400', detail = 'quantities.' || v_quantity.key;
    end if;
    if jsonb_typeof(v_quantity.value) <> 'number' or (v_quantity.value #>> '{}')::numeric < 0
       or (v_quantity.value #>> '{}')::numeric <> trunc((v_quantity.value #>> '{}')::numeric) then
      raise exception 'quantity % is not a non-negative integer', v_quantity.key
        using errcode = 'TP400', detail = 'quantities.' || v_quantity.key;
    end if;
    v_cost := v_cost + (v_quantity.value #>> '{}')::numeric * (v_rates ->> v_quantity.key)::numeric;
  end loop;
  return trim_scale(v_cost);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_price_events(p_account_ids text[], p_meters text[], p_quantities jsonb[], p_now timestamp with time zone, OUT costs numeric[], OUT rate_card_ids text[], OUT rate_card_versions integer[], OUT carries numeric[])
 RETURNS record
 LANGUAGE sql
 STABLE
AS $function$
  with priced_account as (
    select distinct e.account_id from unnest(p_account_ids, p_meters) as e(account_id, meter) where e.meter is not null
  ),
  -- Each account read once, by its key (a batch holds a few of many accounts): its carry, read
  -- once per batch whatever the number of its priced events. An unknown account has no row.
  account as (
    select d.account_id as id, a.carry, c.rate_card_id
    from priced_account d join accounts a on a.id = d.account_id
    cross join lateral tally_account_rate_cards(array[d.account_id]) c
  ),
  version as (
    select d.rate_card_id, v.version, v.rates
    from (select distinct rate_card_id from account) d
    cross join lateral tally_rate_card_in_effect(d.rate_card_id, p_now) v
  )
  select
    array_agg(case when e.meter is null or a.id is null then null when r.priced then trim_scale(r.cost)
      else tally_price(v.rates, e.meter, e.quantities) end order by e.ord),
    array_agg(v.rate_card_id order by e.ord), array_agg(v.version order by e.ord), array_agg(a.carry order by e.ord)
  from unnest(p_account_ids, p_meters, p_quantities) with ordinality as e(account_id, meter, quantities, ord)
  left join account a on e.meter is not null and a.id = e.account_id
  left join version v on v.rate_card_id = a.rate_card_id
  left join lateral (
    -- Quantities are numbers (the API checks them; a string fails the cast); a dimension without
    -- a rate, or a negative or fractional quantity, is left to tally_price to refuse.
    select sum(q.value::numeric * (v.rates -> e.meter ->> q.key)::numeric) as cost,
      count(v.rates -> e.meter ->> q.key) = count(*) and min(q.value::numeric) >= 0
        and bool_and(q.value::numeric = trunc(q.value::numeric)) as priced
    from jsonb_each(e.quantities) q) r on a.id is not null
$function$;

CREATE OR REPLACE FUNCTION public.tally_price_spend(p_account text, p_meter text, p_quantities jsonb, p_carry numeric, p_now timestamp with time zone, p_reserve boolean)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_card text := tally_account_rate_card(p_account);
  v_version rate_card_versions;
  v_cost numeric;
  v_credits numeric;
begin
  if v_card is null then
    raise exception 'no rate card prices meter % (the catalog has no rate cards)', p_meter using errcode = 'TP404', detail = p_meter;
  end if;
  v_version := tally_rate_card_in_effect(v_card, p_now);
  if v_version.rate_card_id is null then
    raise exception 'invariant broken: no version of rate card % is in effect at %', v_card, tally_iso(p_now)
      using errcode = 'TX001';
  end if;
  v_cost := tally_price(v_version.rates, p_meter, p_quantities);
  v_credits := case when p_reserve then ceil(v_cost) else floor(v_cost + p_carry) end;
  if v_credits > tally_spend_credits_max() then
    raise exception 'this spend would move % credits, more than a balance can hold (%)', v_credits, tally_spend_credits_max()
      using errcode = 'TP400', detail = 'quantities';
  end if;
  return jsonb_build_object('meter', p_meter, 'quantities', p_quantities, 'rate_card_id', v_card,
    'rate_card_version', v_version.version, 'cost', v_cost, 'credits', v_credits,
    'carry_after', case when p_reserve then null else trim_scale(v_cost + p_carry - v_credits) end);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_priced_answer(p_cost numeric, p_card text, p_version integer)
 RETURNS jsonb
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select case when p_card is null then '{}'::jsonb
    else jsonb_build_object('cost', trim_scale(p_cost)::text, 'rate_card', jsonb_build_object('id', p_card, 'version', p_version)) end
$function$;

CREATE OR REPLACE FUNCTION public.tally_priced_capture(p_hold_id bigint, p_quantities jsonb, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_rates jsonb;
  v_carry numeric;
  v_cost numeric;
  v_credits numeric;
  v_available bigint;
begin
  if v_hold.meter is null then
    raise exception 'hold_% holds credits, not a meter: capture it with amount', p_hold_id
      using errcode = 'TP400', detail = 'quantities';
  end if;
  select rates into v_rates from rate_card_versions
    where rate_card_id = v_hold.rate_card_id and version = v_hold.rate_card_version;
  if not found then
    raise exception 'invariant broken: hold_% names rate card % version %, which does not exist', p_hold_id,
      v_hold.rate_card_id, v_hold.rate_card_version using errcode = 'TX001';
  end if;
  select carry into v_carry from accounts where id = v_hold.account_id;
  v_cost := tally_price(v_rates, v_hold.meter, coalesce(p_quantities, v_hold.quantities));
  v_credits := floor(v_cost + v_carry);
  if v_credits > v_hold.amount then
    raise exception 'capture of % credits (cost %) exceeds the hold of %', v_credits, v_cost, v_hold.amount
      using errcode = 'TH400', detail = v_hold.amount::text;
  end if;
  perform tally_release(v_hold, v_credits::bigint, 'captured', p_actor, v_now,
    jsonb_build_object('meter', v_hold.meter, 'quantities', coalesce(p_quantities, v_hold.quantities),
      'rate_card_id', v_hold.rate_card_id, 'rate_card_version', v_hold.rate_card_version, 'cost', v_cost,
      'credits', v_credits, 'carry_after', trim_scale(v_cost + v_carry - v_credits)));
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('captured', v_credits, 'released', v_hold.amount - v_credits, 'available', v_available)
    || tally_priced_answer(v_cost, v_hold.rate_card_id, v_hold.rate_card_version);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_priced_hold(p_account text, p_meter text, p_quantities jsonb, p_expires_in_seconds integer, p_key text, p_hash text, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
  v_refusal jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'hold', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  v_refusal := tally_meter_refusal(p_account, p_meter);
  if v_refusal is not null then
    return tally_remember(p_key, p_account, 'hold', p_hash, 403, v_refusal, v_now);
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, true);
  return tally_hold(p_account, (v_priced->>'credits')::bigint, p_expires_in_seconds, p_key, p_hash, p_actor, v_now, v_priced);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_priced_usage(p_account text, p_meter text, p_quantities jsonb, p_key text, p_hash text, p_actor text, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_open record;
  v_priced jsonb;
  v_refusal jsonb;
begin
  select * into v_open from tally_open_priced(p_account, p_key, 'usage', p_hash);
  if v_open.p_outcome is not null then
    return v_open.p_outcome;
  end if;
  -- A meter outside the account's plan is refused before anything is priced or written; the
  -- refusal is the key's first outcome, as 402 is.
  v_refusal := tally_meter_refusal(p_account, p_meter);
  if v_refusal is not null then
    return tally_remember(p_key, p_account, 'usage', p_hash, 403, v_refusal, v_now);
  end if;
  v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_open.p_carry, v_now, false);
  return tally_usage(p_account, (v_priced->>'credits')::bigint, p_key, p_hash, p_actor, p_reference, v_now, v_priced);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_prior_outcome(p_account text, p_key text, p_operation text, p_hash text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_prior request_keys;
  v_entry entries;
begin
  select * into v_prior from request_keys where account_id = p_account and key = p_key;
  if found then
    return tally_replay(v_prior, p_operation, p_hash);
  end if;
  select * into v_entry from entries where account_id = p_account and idempotency_key = 'request:' || p_key;
  if found then
    return tally_replay(tally_spend_key(v_entry, p_key), p_operation, p_hash);
  end if;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_publish_rate_card(p_card text, p_rates jsonb, p_effective_at timestamp with time zone, p_source text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_before rate_card_versions;
  v_version rate_card_versions;
begin
  perform 1 from rate_cards where id = p_card for update;
  if not found then
    raise exception 'no rate card %', p_card using errcode = 'TR404';
  end if;
  if p_effective_at < v_now - interval '60 seconds' then
    raise exception 'effective_at % is more than 60 seconds in the past', tally_iso(p_effective_at)
      using errcode = 'TR400', detail = 'effective_at';
  end if;
  v_before := tally_rate_card_in_effect(p_card, v_now);
  insert into rate_card_versions (rate_card_id, version, effective_at, rates, source, published_at)
  select p_card, coalesce(max(version), 0) + 1, greatest(coalesce(p_effective_at, v_now), v_now), p_rates, p_source, v_now
    from rate_card_versions where rate_card_id = p_card
  returning * into v_version;
  insert into audit_log (account_id, actor, action, before, after, created_at)
  values (null, case when p_source = 'admin' then 'admin' else 'system' end, 'rate_card.published',
    case when v_before.rate_card_id is null then null else tally_rate_card_version_json(v_before) end,
    tally_rate_card_version_json(v_version), v_now);
  return tally_rate_card_version_json(v_version);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_quote(p_account text, p_amount bigint, p_meter text, p_quantities jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_account accounts;
  v_available bigint;
  v_priced jsonb;
  v_credits bigint;
  v_reason text;
begin
  select * into v_account from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  v_available := v_account.available - coalesce((select sum(g.remaining) from grants g
    where g.account_id = p_account and g.live and g.expires_at <= v_now), 0)
    + tally_recurring_pending(p_account, v_now);
  if p_meter is not null then
    v_priced := tally_price_spend(p_account, p_meter, p_quantities, v_account.carry, v_now, false);
  end if;
  v_credits := coalesce((v_priced->>'credits')::bigint, p_amount);
  if tally_meter_refusal(p_account, p_meter) is not null then
    v_reason := 'meter_not_entitled';
  elsif v_credits > v_available then
    v_reason := 'insufficient_credits';
  elsif v_credits > 0 and v_account.spend_limited and tally_spend_limit_passed(p_account, v_credits, v_now) is not null then
    v_reason := 'spend_limit_exceeded';
  end if;
  return jsonb_build_object('amount', v_credits,
      'cost', coalesce(trim_scale((v_priced->>'cost')::numeric)::text, p_amount::text),
      'rate_card', case when v_priced is null then null
        else jsonb_build_object('id', v_priced->>'rate_card_id', 'version', (v_priced->>'rate_card_version')::integer) end,
      'available', v_available, 'allowed', v_reason is null)
    || case when v_reason is null then '{}'::jsonb else jsonb_build_object('reason', v_reason) end;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_rate_card_in_effect(p_card text, p_now timestamp with time zone)
 RETURNS rate_card_versions
 LANGUAGE sql
 STABLE
AS $function$
  select * from rate_card_versions where rate_card_id = p_card and effective_at <= p_now
  order by effective_at desc, version desc limit 1
$function$;

CREATE OR REPLACE FUNCTION public.tally_rate_card_next(p_card text, p_now timestamp with time zone)
 RETURNS rate_card_versions
 LANGUAGE sql
 STABLE
AS $function$
  select * from rate_card_versions where rate_card_id = p_card and effective_at > p_now
  order by effective_at, version desc limit 1
$function$;

CREATE OR REPLACE FUNCTION public.tally_rate_card_version_json(p_version rate_card_versions)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select jsonb_build_object('id', p_version.rate_card_id, 'version', p_version.version,
    'effective_at', tally_iso(p_version.effective_at), 'rates', p_version.rates,
    'published_at', tally_iso(p_version.published_at))
$function$;

CREATE OR REPLACE FUNCTION public.tally_rate_card_versions_json(p_card text)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select case when exists (select 1 from rate_cards where id = p_card) then
    jsonb_build_object('versions', coalesce((select jsonb_agg(tally_rate_card_version_json(v) order by v.version desc)
      from rate_card_versions v where v.rate_card_id = p_card), '[]'::jsonb))
  end
$function$;

CREATE OR REPLACE FUNCTION public.tally_rate_cards_json(p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select jsonb_build_object('rate_cards', coalesce(jsonb_agg(
      tally_rate_card_version_json(v) || jsonb_build_object('next',
        (select tally_rate_card_version_json(n) from tally_rate_card_next(c.id, t.now) n where n.rate_card_id is not null))
      order by c.id collate "C"), '[]'::jsonb))
  from (select coalesce(p_now, now()) as now) t
    cross join rate_cards c
    cross join lateral tally_rate_card_in_effect(c.id, t.now) v
  where v.rate_card_id is not null
$function$;

CREATE OR REPLACE FUNCTION public.tally_rates_equal(p_left jsonb, p_right jsonb)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select not exists (
    select 1
    from (select m.key as meter, d.key as dimension, (d.value #>> '{}')::numeric as rate
          from jsonb_each(p_left) m cross join lateral jsonb_each(m.value) d) l
    full join (select m.key as meter, d.key as dimension, (d.value #>> '{}')::numeric as rate
               from jsonb_each(p_right) m cross join lateral jsonb_each(m.value) d) r
      on l.meter = r.meter and l.dimension = r.dimension
    where l.rate is distinct from r.rate)
$function$;

CREATE OR REPLACE FUNCTION public.tally_recurring_due(p_account text, p_now timestamp with time zone)
 RETURNS TABLE(plan_id text, every text, credits bigint, period_start date, period_end timestamp with time zone, grant_key text)
 LANGUAGE sql
 STABLE
AS $function$
  select d.plan_id, d.every, d.credits, d.period_start, d.period_end, d.grant_key from (
    select distinct i.plan_id, r.value->>'every' as every, (r.value->>'credits')::bigint as credits,
      p.period_start, p.period_end,
      'recurring:' || p_account || ':' || i.plan_id || ':' || (r.value->>'every') || ':'
        || to_char(p.period_start, 'YYYY-MM-DD') as grant_key
    from tally_plan_items(array[p_account]) i
    cross join lateral jsonb_array_elements(i.recurring_grants) r
    cross join lateral tally_recurring_period(r.value->>'every', p_now) p
    where i.plan_id is not null and i.recurring_grants <> '[]'::jsonb) d
  where not exists (select 1 from grants g where g.account_id = p_account and g.grant_key = d.grant_key)
$function$;

CREATE OR REPLACE FUNCTION public.tally_recurring_pending(p_account text, p_now timestamp with time zone)
 RETURNS bigint
 LANGUAGE sql
 STABLE
AS $function$
  select case when not tally_catalog_recurs() then 0 else greatest(0, coalesce(
    (select sum(credits) from tally_recurring_due(p_account, p_now)), 0)
    - (select debt from accounts where id = p_account))::bigint end
$function$;

CREATE OR REPLACE FUNCTION public.tally_recurring_period(p_every text, p_now timestamp with time zone, OUT period_start date, OUT period_end timestamp with time zone)
 RETURNS record
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select d::date, (d + case p_every when 'day' then interval '1 day' when 'week' then interval '7 days'
    else interval '1 month' end) at time zone 'UTC'
  from (select date_trunc(p_every, p_now at time zone 'UTC') as d) t
$function$;

CREATE OR REPLACE FUNCTION public.tally_refuse_entry_change()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  if tg_op = 'UPDATE' and current_setting('tally.erasure', true) = 'on'
     and (to_jsonb(new) - 'reference') = (to_jsonb(old) - 'reference') then
    return new;
  end if;
  raise exception 'ledger entries are append-only (% refused)', tg_op using errcode = 'TE001';
end $function$;

CREATE OR REPLACE FUNCTION public.tally_refuse_rate_card_version_change()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  raise exception 'rate card versions are never edited or deleted (% refused)', tg_op using errcode = 'TE001';
end $function$;

CREATE OR REPLACE FUNCTION public.tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE sql
AS $function$
  select tally_release(p_hold, p_captured, p_status, p_actor, p_now, null)
$function$;

CREATE OR REPLACE FUNCTION public.tally_release(p_hold holds, p_captured bigint, p_status text, p_actor text, p_now timestamp with time zone, p_priced jsonb)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  v_release bigint := p_hold.amount - p_captured;
  v_left bigint := v_release;
  v_expired bigint := 0;
  v_repay_left bigint;
  v_give bigint;
  v_back bigint;
  v_ids bigint[] := '{}';
  v_credits bigint[] := '{}';
  v_net bigint;
  i integer;
begin
  update holds set status = p_status, captured = p_captured, released = v_release, resolved_at = p_now
    where id = p_hold.id;
  select debt into v_repay_left from accounts where id = p_hold.account_id;
  for i in reverse cardinality(p_hold.grant_ids) .. 1 loop
    exit when v_left = 0;
    v_give := least(-p_hold.grant_credits[i], v_left);
    v_left := v_left - v_give;
    if tally_grant_expired(p_hold.account_id, p_hold.grant_ids[i], p_now) then
      v_expired := v_expired + v_give;
      continue;
    end if;
    v_back := v_give - least(v_give, v_repay_left);
    v_repay_left := v_repay_left - (v_give - v_back);
    if v_back > 0 then
      update grants set remaining = remaining + v_back where id = p_hold.grant_ids[i];
      v_ids := v_ids || p_hold.grant_ids[i];
      v_credits := v_credits || v_back;
    end if;
  end loop;
  update accounts
    set held = held - p_hold.amount,
        available = available + (select coalesce(sum(c), 0) from unnest(v_credits) c),
        debt = v_repay_left,
        carry = coalesce((p_priced->>'carry_after')::numeric, carry),
        updated_at = p_now
    where id = p_hold.account_id
    returning available - debt into v_net;
  if p_captured > 0 or p_priced is not null then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at, meter, quantities, rate_card_id, rate_card_version, cost, carry_after)
    values (p_hold.account_id, 'capture', 0, v_net - v_release + v_expired, p_hold.id,
      'capture:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'captured', p_captured), p_actor, p_now,
      p_priced->>'meter', p_priced->'quantities', p_priced->>'rate_card_id',
      (p_priced->>'rate_card_version')::integer, (p_priced->>'cost')::numeric, (p_priced->>'carry_after')::numeric);
  end if;
  if v_release > 0 then
    insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, hold_id,
      idempotency_key, reference, actor, created_at)
    values (p_hold.account_id, 'release', v_release, v_net + v_expired, v_ids, v_credits, p_hold.id,
      'release:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id, 'status', p_status), p_actor, p_now);
  end if;
  if v_expired > 0 then
    insert into entries (account_id, kind, amount, balance_after, hold_id, idempotency_key,
      reference, actor, created_at)
    values (p_hold.account_id, 'expire', -v_expired, v_net, p_hold.id, 'expire:hold_' || p_hold.id,
      jsonb_build_object('hold_id', 'hold_' || p_hold.id), 'system', p_now);
  end if;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_remember(p_key text, p_account text, p_operation text, p_hash text, p_status integer, p_body jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
begin
  insert into request_keys (key, account_id, operation, payload_hash, status_code, response, created_at)
  values (p_key, p_account, p_operation, p_hash, p_status, p_body, p_now);
  return jsonb_build_object('status', p_status, 'body', p_body);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_replay(p_prior request_keys, p_operation text, p_hash text)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
begin
  if p_prior.operation <> p_operation or p_prior.payload_hash is distinct from p_hash then
    return jsonb_build_object('status', 409, 'body', tally_error('idempotency_conflict',
      'this idempotency key was first used with another request',
      jsonb_build_object('idempotency_key', p_prior.key)));
  end if;
  if p_prior.status_code < 300 then
    return jsonb_build_object('status', p_prior.status_code,
      'body', p_prior.response || '{"replayed": true}'::jsonb);
  end if;
  if jsonb_typeof(p_prior.response->'error') = 'object' then
    return jsonb_build_object('status', p_prior.status_code,
      'body', jsonb_set(p_prior.response, '{error,replayed}', 'true'::jsonb));
  end if;
  return jsonb_build_object('status', p_prior.status_code, 'body', p_prior.response);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_request_top_up(p_account text, p_at timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  v_setting auto_top_ups;
  v_this_month integer;
begin
  if exists (select 1 from top_ups where account_id = p_account and status = 'pending') then
    return;
  end if;
  select s.* into v_setting from auto_top_ups s join accounts a on a.id = s.account_id
    where s.account_id = p_account and s.enabled and not a.flagged;
  if not found then
    return;
  end if;
  select count(*) into v_this_month from top_ups
    where account_id = p_account and status in ('pending', 'succeeded')
      and created_at >= date_trunc('month', p_at at time zone 'UTC') at time zone 'UTC';
  if v_this_month >= v_setting.max_per_month then
    return;
  end if;
  insert into top_ups (account_id, number, pack_id, created_at)
  select p_account, coalesce(max(number), 0) + 1, v_setting.pack_id, p_at
    from top_ups where account_id = p_account
  on conflict (account_id) where status = 'pending' do nothing;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_restore(p_account text, p_clawback_key text, p_credits bigint, p_key text, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_clawback entries;
  v_entry entries;
  v_repay bigint;
  v_back record;
  v_net bigint;
begin
  select * into v_entry from entries where account_id = p_account and idempotency_key = p_key;
  if found then
    return jsonb_build_object('created', false, 'entry', tally_entry_json(v_entry));
  end if;
  select * into v_clawback from entries
    where account_id = p_account and idempotency_key = p_clawback_key and kind = 'clawback';
  if not found or p_credits <= 0 or p_credits > -v_clawback.amount then
    raise exception 'restore % of % credits does not match clawback %', p_key, p_credits, p_clawback_key
      using errcode = 'TX001';
  end if;
  select least(debt, p_credits) into v_repay from accounts where id = p_account;
  select * into v_back from tally_restore_to_grants(p_account, v_clawback, p_credits - v_repay, v_now);
  update accounts set available = available + v_back.returned, debt = debt - v_repay, updated_at = v_now
    where id = p_account returning available - debt into v_net;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, created_at)
  values (p_account, 'restore', p_credits - v_back.left_over, v_net + v_back.expired, v_back.grant_ids,
    v_back.grant_credits, p_key, p_reference || jsonb_build_object('clawback', p_clawback_key,
      'debt_reversed', v_repay), 'stripe', v_now)
  returning * into v_entry;
  if v_back.expired > 0 then
    insert into entries (account_id, kind, amount, balance_after, idempotency_key, reference, actor, created_at)
    values (p_account, 'expire', -v_back.expired, v_net, 'expire:' || p_key,
      jsonb_build_object('restore', p_key), 'system', v_now);
  end if;
  if v_back.left_over > 0 then
    perform tally_add_grant(p_account, 'purchase', v_back.left_over, 0, null, p_key || ':debt-repaid',
      'restore', p_reference || jsonb_build_object('clawback', p_clawback_key), 'stripe', null, v_now);
  end if;
  return jsonb_build_object('created', true, 'entry', tally_entry_json(v_entry));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_restore_to_grants(p_account text, p_clawback entries, p_credits bigint, p_now timestamp with time zone, OUT grant_ids bigint[], OUT grant_credits bigint[], OUT returned bigint, OUT expired bigint, OUT left_over bigint)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
declare
  v_give bigint;
  i integer;
begin
  grant_ids := '{}';
  grant_credits := '{}';
  returned := 0;
  expired := 0;
  left_over := p_credits;
  for i in reverse cardinality(p_clawback.grant_ids) .. 1 loop
    exit when left_over = 0;
    v_give := least(-p_clawback.grant_credits[i], left_over);
    left_over := left_over - v_give;
    if tally_grant_expired(p_account, p_clawback.grant_ids[i], p_now) then
      expired := expired + v_give;
    else
      update grants set remaining = remaining + v_give where id = p_clawback.grant_ids[i];
      grant_ids := grant_ids || p_clawback.grant_ids[i];
      grant_credits := grant_credits || v_give;
      returned := returned + v_give;
    end if;
  end loop;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_sequence_events(p_limit integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
declare
  v_base bigint;
  v_count integer;
begin
  if not pg_try_advisory_xact_lock(7316122452) then
    return 0;
  end if;
  select coalesce(max(sequence), 0) into v_base from events;
  with due as (
    select id, row_number() over (order by id) as position from (
      select id from events
      where sequence is null and xid < pg_snapshot_xmin(pg_current_snapshot())
      order by id limit p_limit) oldest),
  numbered as (
    update events e set sequence = v_base + due.position from due where e.id = due.id
    returning e.sequence, e.type, e.account_id),
  fanned as (
    insert into event_deliveries (endpoint_id, sequence, account_id)
    select w.id, n.sequence, coalesce(n.account_id, '') from numbered n
    join webhook_endpoints w on w.event_types is null or n.type = any (w.event_types)
    returning 1)
  select count(*) into v_count from numbered;
  return v_count;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_set_spend_limits(p_account text, p_set_day boolean, p_per_day bigint, p_set_month boolean, p_per_month bigint, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day date := (v_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', v_now at time zone 'UTC')::date;
  v_before spend_limits;
  v_per_day bigint;
  v_per_month bigint;
  v_after jsonb;
begin
  perform tally_lock_account(p_account, v_now);
  select * into v_before from spend_limits where account_id = p_account;
  v_per_day := case when p_set_day then p_per_day else v_before.per_day end;
  v_per_month := case when p_set_month then p_per_month else v_before.per_month end;
  if v_per_day is null and v_per_month is null then
    delete from spend_limits where account_id = p_account;
    update accounts set spend_limited = false where id = p_account and spend_limited;
  elsif v_before.account_id is not null then
    update spend_limits set per_day = v_per_day, per_month = v_per_month,
      day_reached = case when per_day is distinct from v_per_day then null else day_reached end,
      month_reached = case when per_month is distinct from v_per_month then null else month_reached end,
      updated_at = v_now
    where account_id = p_account;
  else
    insert into spend_limits (account_id, per_day, per_month, day, spent_day, month, spent_month, updated_at)
    values (p_account, v_per_day, v_per_month,
      v_day, tally_spent_since(p_account, v_day::timestamp at time zone 'UTC'),
      v_month, tally_spent_since(p_account, v_month::timestamp at time zone 'UTC'), v_now);
    update holds set counted_in_spend_limits = true
      where account_id = p_account and status = 'pending' and not counted_in_spend_limits;
    update accounts set spend_limited = true where id = p_account;
  end if;
  v_after := tally_spend_limits_json(p_account, v_now);
  if (v_before.per_day, v_before.per_month) is distinct from (v_per_day, v_per_month) then
    insert into audit_log (account_id, actor, action, before, after, created_at)
    values (p_account, p_actor, 'spend_limits.set',
      jsonb_build_object('per_day', v_before.per_day, 'per_month', v_before.per_month),
      jsonb_build_object('per_day', v_per_day, 'per_month', v_per_month), v_now);
  end if;
  return v_after;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_settle(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  h holds;
begin
  for h in
    select * from holds
    where account_id = p_account and status = 'pending' and expires_at <= p_now order by id
  loop
    perform tally_release(h, 0, 'expired', 'system', p_now);
  end loop;
  perform tally_expire_due(p_account, p_now);
end $function$;

CREATE OR REPLACE FUNCTION public.tally_settle_account(p_account text, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  perform 1 from accounts where id = p_account for update;
  if found then
    perform tally_settle(p_account, coalesce(p_now, now()));
  end if;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_spend_credits_max()
 RETURNS bigint
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select 9007199254740991::bigint
$function$;

CREATE OR REPLACE FUNCTION public.tally_spend_key(p_entry entries, p_key text)
 RETURNS request_keys
 LANGUAGE sql
 STABLE
AS $function$
  select row(p_key, p_entry.account_id,
    case when p_entry.kind = 'usage' and p_entry.payload_hash is not null then 'usage' else p_entry.kind end,
    p_entry.payload_hash, 200,
    jsonb_build_object('entry_id', 'entry_' || p_entry.id, 'amount', -p_entry.amount,
      'available', p_entry.balance_after)
      || tally_priced_answer(p_entry.cost, p_entry.rate_card_id, p_entry.rate_card_version)
      || '{"replayed": false}'::jsonb,
    p_entry.created_at)::request_keys
$function$;

CREATE OR REPLACE FUNCTION public.tally_spend_limit_event(p_account text, p_window text, p_limit bigint, p_spent bigint, p_amount bigint, p_refused boolean, p_resets_at timestamp with time zone, p_now timestamp with time zone)
 RETURNS void
 LANGUAGE sql
AS $function$
  select tally_event('spend_limit.reached', p_account, jsonb_build_object('window', p_window,
    'limit', p_limit, 'spent', p_spent, 'amount', p_amount, 'refused', p_refused,
    'resets_at', tally_iso(p_resets_at)), p_now)
$function$;

CREATE OR REPLACE FUNCTION public.tally_spend_limit_passed(p_account text, p_amount bigint, p_now timestamp with time zone)
 RETURNS text
 LANGUAGE sql
 STABLE
AS $function$
  select case
    when l.per_day is not null
      and (case when l.day < (p_now at time zone 'UTC')::date then 0 else l.spent_day end) + p_amount > l.per_day then 'day'
    when l.per_month is not null
      and (case when l.month < date_trunc('month', p_now at time zone 'UTC')::date then 0 else l.spent_month end) + p_amount > l.per_month
      then 'month'
  end
  from spend_limits l where l.account_id = p_account
$function$;

CREATE OR REPLACE FUNCTION public.tally_spend_limits_give_back()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  update spend_limits s set
    spent_day = case when s.day = (new.created_at at time zone 'UTC')::date
                     then s.spent_day - new.released else s.spent_day end,
    spent_month = case when s.month = date_trunc('month', new.created_at at time zone 'UTC')::date
                       then s.spent_month - new.released else s.spent_month end
  where s.account_id = new.account_id;
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_spend_limits_json(p_account text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
 STABLE
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_day date := (v_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', v_now at time zone 'UTC')::date;
  v_limits spend_limits;
  v_spent_day bigint;
  v_spent_month bigint;
begin
  perform 1 from accounts where id = p_account;
  if not found then
    raise exception 'no account %', p_account using errcode = 'TA404';
  end if;
  select * into v_limits from spend_limits where account_id = p_account;
  if found then
    v_spent_day := case when v_limits.day >= v_day then v_limits.spent_day else 0 end;
    v_spent_month := case when v_limits.month >= v_month then v_limits.spent_month else 0 end;
  else
    v_spent_day := tally_spent_since(p_account, v_day::timestamp at time zone 'UTC');
    v_spent_month := tally_spent_since(p_account, v_month::timestamp at time zone 'UTC');
  end if;
  return jsonb_build_object('account_id', p_account, 'per_day', v_limits.per_day, 'per_month', v_limits.per_month,
    'spent', jsonb_build_object('day', v_spent_day, 'month', v_spent_month),
    'resets_at', jsonb_build_object('day', tally_iso((v_day + 1)::timestamp at time zone 'UTC'),
      'month', tally_iso((v_month + interval '1 month')::timestamp at time zone 'UTC')));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_spend_limits_take(p_account text, p_amount bigint, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_day date := (p_now at time zone 'UTC')::date;
  v_month date := date_trunc('month', p_now at time zone 'UTC')::date;
  v_limits spend_limits;
  v_window text;
  v_limit bigint;
  v_spent bigint;
  v_resets_at timestamptz;
begin
  select * into v_limits from spend_limits where account_id = p_account;
  if not found then
    raise exception 'invariant broken: account % is marked as limited but has no spend limits', p_account
      using errcode = 'TX001';
  end if;
  -- A spend whose clock is behind the counters (two transactions racing over midnight) counts in
  -- the newer window: windows never move back, so the count errs on the side of the limit.
  if v_day > v_limits.day then
    v_limits.day := v_day;
    v_limits.spent_day := 0;
  end if;
  if v_month > v_limits.month then
    v_limits.month := v_month;
    v_limits.spent_month := 0;
  end if;
  -- The day is checked first: it is the tighter window when both would be passed.
  if v_limits.per_day is not null and v_limits.spent_day + p_amount > v_limits.per_day then
    v_window := 'day';
    v_limit := v_limits.per_day;
    v_spent := v_limits.spent_day;
    v_resets_at := (v_limits.day + 1)::timestamp at time zone 'UTC';
    if v_limits.day_reached is distinct from v_limits.day then
      perform tally_spend_limit_event(p_account, v_window, v_limit, v_spent, p_amount, true, v_resets_at, p_now);
      v_limits.day_reached := v_limits.day;
    end if;
  elsif v_limits.per_month is not null and v_limits.spent_month + p_amount > v_limits.per_month then
    v_window := 'month';
    v_limit := v_limits.per_month;
    v_spent := v_limits.spent_month;
    v_resets_at := (v_limits.month + interval '1 month')::timestamp at time zone 'UTC';
    if v_limits.month_reached is distinct from v_limits.month then
      perform tally_spend_limit_event(p_account, v_window, v_limit, v_spent, p_amount, true, v_resets_at, p_now);
      v_limits.month_reached := v_limits.month;
    end if;
  else
    v_limits.spent_day := v_limits.spent_day + p_amount;
    v_limits.spent_month := v_limits.spent_month + p_amount;
    if v_limits.spent_day = v_limits.per_day and v_limits.day_reached is distinct from v_limits.day then
      perform tally_spend_limit_event(p_account, 'day', v_limits.per_day, v_limits.spent_day, p_amount, false,
        (v_limits.day + 1)::timestamp at time zone 'UTC', p_now);
      v_limits.day_reached := v_limits.day;
    end if;
    if v_limits.spent_month = v_limits.per_month and v_limits.month_reached is distinct from v_limits.month then
      perform tally_spend_limit_event(p_account, 'month', v_limits.per_month, v_limits.spent_month, p_amount, false,
        (v_limits.month + interval '1 month')::timestamp at time zone 'UTC', p_now);
      v_limits.month_reached := v_limits.month;
    end if;
  end if;
  update spend_limits set day = v_limits.day, spent_day = v_limits.spent_day, month = v_limits.month,
    spent_month = v_limits.spent_month, day_reached = v_limits.day_reached, month_reached = v_limits.month_reached
    where account_id = p_account;
  if v_window is null then
    return null;
  end if;
  return tally_error('spend_limit_exceeded',
    format('this spend of %s credits would pass the %s limit of %s credits (%s spent)', p_amount, v_window, v_limit, v_spent),
    jsonb_build_object('window', v_window, 'limit', v_limit, 'spent', v_spent, 'resets_at', tally_iso(v_resets_at)));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_spent_since(p_account text, p_start timestamp with time zone)
 RETURNS bigint
 LANGUAGE sql
 STABLE
AS $function$
  select coalesce(sum(case when e.kind = 'usage' then -e.amount
                           when h.status = 'pending' then h.amount
                           else h.captured end), 0)::bigint
  from entries e left join holds h on e.kind = 'hold' and h.id = e.hold_id
  where e.account_id = p_account and e.kind in ('usage', 'hold') and e.created_at >= p_start
$function$;

CREATE OR REPLACE FUNCTION public.tally_subscription_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  perform tally_event('subscription.updated', new.account_id, tally_subscription_json(new), null);
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_subscription_json(s subscriptions)
 RETURNS jsonb
 LANGUAGE sql
 STABLE
AS $function$
  select jsonb_build_object('subscription_id', s.id, 'status', s.status, 'plan_id', s.plan_id,
    'interval', s.billing_interval, 'current_period_start', tally_iso(s.current_period_start),
    'current_period_end', tally_iso(s.current_period_end), 'cancel_at_period_end', s.cancel_at_period_end,
    'trial_end', tally_iso(s.trial_end))
$function$;

CREATE OR REPLACE FUNCTION public.tally_subscription_status_rank(p_status text)
 RETURNS integer
 LANGUAGE sql
 IMMUTABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.tally_sync_catalog_pricing(p_cards jsonb, p_default text, p_plans jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_card record;
  v_last rate_card_versions;
  v_published jsonb := '[]'::jsonb;
begin
  insert into rate_cards (id, created_at)
  select c->>'id', v_now from jsonb_array_elements(p_cards) c
  order by c->>'id' collate "C"
  on conflict (id) do nothing;
  perform 1 from rate_cards where id in (select c->>'id' from jsonb_array_elements(p_cards) c)
    order by id collate "C" for update;
  for v_card in
    select c->>'id' as id, c->'rates' as rates from jsonb_array_elements(p_cards) c order by c->>'id' collate "C"
  loop
    select * into v_last from rate_card_versions
      where rate_card_id = v_card.id and source = 'catalog' order by version desc limit 1;
    if not found or not tally_rates_equal(v_last.rates, v_card.rates) then
      v_published := v_published || jsonb_build_array(
        tally_publish_rate_card(v_card.id, v_card.rates, v_now, 'catalog', v_now));
    end if;
  end loop;
  update rate_cards set is_default = false where is_default and id is distinct from p_default;
  update rate_cards set is_default = true where id = p_default and not is_default;
  delete from catalog_plans where id not in (select p->>'id' from jsonb_array_elements(p_plans) p);
  -- The free plan may move to another plan: the old one stops being free first (one free plan).
  update catalog_plans set free = false, updated_at = v_now
    where free and id not in (select p->>'id' from jsonb_array_elements(p_plans) p where (p->>'free')::boolean);
  insert into catalog_plans (id, rate_card_id, free, credits_per_month, entitlements, recurring_grants, updated_at)
  select p->>'id', p->>'rate_card', coalesce((p->>'free')::boolean, false), coalesce((p->>'credits_per_month')::bigint, 0),
    nullif(p->'entitlements', 'null'::jsonb), coalesce(p->'recurring_grants', '[]'::jsonb), v_now
  from jsonb_array_elements(p_plans) p order by p->>'id' collate "C"
  on conflict (id) do update set rate_card_id = excluded.rate_card_id, free = excluded.free,
    credits_per_month = excluded.credits_per_month, entitlements = excluded.entitlements,
    recurring_grants = excluded.recurring_grants, updated_at = excluded.updated_at
    where (catalog_plans.rate_card_id, catalog_plans.free, catalog_plans.credits_per_month, catalog_plans.entitlements,
      catalog_plans.recurring_grants) is distinct from (excluded.rate_card_id, excluded.free, excluded.credits_per_month,
      excluded.entitlements, excluded.recurring_grants);
  return v_published;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_take(p_account text, p_amount bigint, p_now timestamp with time zone, OUT grant_ids bigint[], OUT grant_credits bigint[], p_payment_id bigint DEFAULT NULL::bigint)
 RETURNS record
 LANGUAGE sql
AS $function$
  select * from tally_take_from(p_account, p_amount, p_now, case when p_payment_id is null then '{}'::bigint[]
    else (select coalesce(array_agg(id), '{}') from grants where account_id = p_account and payment_id = p_payment_id) end)
$function$;

CREATE OR REPLACE FUNCTION public.tally_take_from(p_account text, p_amount bigint, p_now timestamp with time zone, p_preferred bigint[], OUT grant_ids bigint[], OUT grant_credits bigint[])
 RETURNS record
 LANGUAGE plpgsql
AS $function$
declare
  g record;
  v_left bigint := p_amount;
  v_take bigint;
begin
  grant_ids := '{}';
  grant_credits := '{}';
  for g in
    select id, remaining from grants
    where account_id = p_account and live and (expires_at is null or expires_at > p_now)
    order by (id = any(p_preferred)) is true desc, priority, expires_at, created_at, id
  loop
    v_take := least(g.remaining, v_left);
    update grants set remaining = remaining - v_take where id = g.id;
    grant_ids := grant_ids || g.id;
    grant_credits := grant_credits || -v_take;
    v_left := v_left - v_take;
    exit when v_left = 0;
  end loop;
  if v_left <> 0 then
    raise exception 'invariant broken: available of account % exceeds its live grants by %',
      p_account, v_left using errcode = 'TX001';
  end if;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_trial_refusal_events()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
begin
  perform tally_event('trial.refused', new.account_id, jsonb_build_object('subscription_id', new.subscription_id,
    'reason', new.reason), new.created_at);
  return null;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_unentitled_accounts(p_account_ids text[], p_meters text[])
 RETURNS text[]
 LANGUAGE sql
 STABLE
AS $function$
  select case when p_meters is null or not tally_meters_restricted() then '{}'::text[] else coalesce((
    select array_agg(distinct e.account_id)
    from unnest(p_account_ids, p_meters) as e(account_id, meter)
    join tally_account_plans(array(select distinct account_id from unnest(p_account_ids) as u(account_id))) p
      on p.account_id = e.account_id
    where e.meter is not null and not p.all_meters and not e.meter = any(p.meters)), '{}') end
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage(p_account text, p_amount bigint, p_key text, p_hash text, p_actor text, p_reference jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
AS $function$
  select tally_usage(p_account, p_amount, p_key, p_hash, p_actor, p_reference, p_now, null)
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage(p_account text, p_amount bigint, p_key text, p_hash text, p_actor text, p_reference jsonb, p_now timestamp with time zone, p_priced jsonb)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_outcome jsonb;
  v_account accounts;
  v_take record;
  v_entry_id bigint;
begin
  v_outcome := tally_open_spend(p_account, p_amount, p_key, 'usage', p_hash, v_now);
  if v_outcome is not null then
    return v_outcome;
  end if;
  -- A spend of 0 credits takes from no grant.
  if p_amount > 0 then
    select * into v_take from tally_take(p_account, p_amount, v_now);
  else
    select '{}'::bigint[] as grant_ids, '{}'::bigint[] as grant_credits into v_take;
  end if;
  update accounts set available = available - p_amount,
      carry = coalesce((p_priced->>'carry_after')::numeric, carry), updated_at = v_now
    where id = p_account returning * into v_account;
  insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits,
    idempotency_key, reference, actor, payload_hash, created_at, meter, quantities, rate_card_id,
    rate_card_version, cost, carry_after)
  values (p_account, 'usage', -p_amount, v_account.available - v_account.debt, v_take.grant_ids,
    v_take.grant_credits, 'request:' || p_key, p_reference, p_actor, p_hash, v_now, p_priced->>'meter',
    p_priced->'quantities', p_priced->>'rate_card_id', (p_priced->>'rate_card_version')::integer,
    (p_priced->>'cost')::numeric, (p_priced->>'carry_after')::numeric)
  returning id into v_entry_id;
  -- A spend that leaves the account below its auto top-up threshold asks for a top-up (null
  -- when auto top-up is off, so other accounts pay one comparison).
  if v_account.available < v_account.top_up_threshold then
    perform tally_request_top_up(p_account, v_now);
  end if;
  return jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || v_entry_id,
    'amount', p_amount, 'available', v_account.available, 'replayed', false)
    || tally_priced_answer((p_priced->>'cost')::numeric, p_priced->>'rate_card_id', (p_priced->>'rate_card_version')::integer));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
AS $function$
  select tally_usage_batch(p_account_ids, p_amounts, p_keys, p_hashes, p_references, p_actors, p_now, null, null)
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch(p_account_ids text[], p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_now timestamp with time zone, p_meters text[], p_quantities jsonb[])
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_count integer := coalesce(cardinality(p_account_ids), 0);
  v_accounts text[];
  v_account text;
  v_amounts bigint[] := p_amounts;
  v_costs numeric[];
  v_rate_card_ids text[];
  v_rate_card_versions integer[];
  v_carries_after numeric[];
  v_per_event text[];
  v_results jsonb[];
  v_below_top_up text[];
begin
  if v_count = 0 then
    return '[]'::jsonb;
  end if;
  perform tally_usage_batch_check(v_count, p_amounts, p_keys, p_hashes, p_references, p_actors, p_meters, p_quantities);
  select coalesce(array_agg(id), '{}') into v_accounts from (
    select id from accounts where id = any(p_account_ids) order by id collate "C" for update) locked;
  if p_meters is not null then
    select * into v_amounts, v_costs, v_rate_card_ids, v_rate_card_versions, v_carries_after
      from tally_usage_batch_price(p_account_ids, p_amounts, p_meters, p_quantities, v_now);
  end if;
  perform tally_usage_batch_settle(v_accounts, p_account_ids, p_keys, v_now);
  -- The period's recurring grants first; an account with a meter its plan lacks goes per event.
  v_per_event := tally_batch_entitlements(v_accounts, p_account_ids, p_meters, v_now);
  select * into v_results, v_below_top_up
    from tally_usage_batch_write(v_accounts, v_per_event, p_account_ids, v_amounts, p_keys, p_hashes, p_references,
      p_actors, p_meters, p_quantities, v_costs, v_rate_card_ids, v_rate_card_versions, v_carries_after, v_now);
  -- As tally_usage: spends that leave an account below its auto top-up threshold ask for one.
  foreach v_account in array coalesce(v_below_top_up, '{}') loop
    perform tally_request_top_up(v_account, v_now);
  end loop;
  return to_jsonb(tally_usage_batch_one_by_one(v_results, p_account_ids, p_amounts, p_keys, p_hashes, p_references,
    p_actors, p_meters, p_quantities, v_now));
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch(p_events jsonb, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE sql
AS $function$
  select tally_usage_batch(
    array_agg(e.value->>'account_id' order by e.n), array_agg((e.value->>'amount')::bigint order by e.n),
    array_agg(e.value->>'idempotency_key' order by e.n), array_agg(e.value->>'payload_hash' order by e.n),
    array_agg(coalesce(e.value->'reference', '{}'::jsonb) order by e.n), array_agg(e.value->>'actor' order by e.n),
    p_now)
  from jsonb_array_elements(p_events) with ordinality as e(value, n)
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_accounts(p_accounts text[], p_per_event text[], p_account_ids text[], p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[], p_now timestamp with time zone)
 RETURNS TABLE(id text, event_ords integer[], event_amounts bigint[], event_spent_to bigint[], event_keys text[], event_hashes text[], event_references jsonb[], event_actors text[], total bigint, carry_after numeric, keys_new boolean, grant_ids bigint[], grant_remaining bigint[], grant_granted_to bigint[], found boolean, available bigint, debt bigint, limited boolean, limits_found boolean, per_day bigint, per_month bigint, spent_day bigint, spent_month bigint, at_once boolean)
 LANGUAGE sql
 STABLE
AS $function$
  select t.*, tally_usage_batch_at_once(t.keys_new, t.id <> all(p_per_event), t.total, t.available,
    coalesce(cardinality(t.grant_ids), 0), t.limited, t.limits_found, t.per_day, t.per_month, t.spent_day, t.spent_month)
  from (
    select p.account_id as id,
      array_agg(p.ord order by p.ord) filter (where p.ord is not null) as event_ords,
      array_agg(p.amount order by p.ord) filter (where p.ord is not null) as event_amounts,
      array_agg(p.spent_to order by p.ord) filter (where p.ord is not null) as event_spent_to,
      array_agg(p.key order by p.ord) filter (where p.ord is not null) as event_keys,
      array_agg(p.hash order by p.ord) filter (where p.ord is not null) as event_hashes,
      array_agg(p.reference order by p.ord) filter (where p.ord is not null) as event_references,
      array_agg(p.actor order by p.ord) filter (where p.ord is not null) as event_actors,
      sum(p.amount)::bigint as total,
      (array_agg(p.carry_after order by p.ord desc) filter (where p.carry_after is not null))[1] as carry_after,
      count(p.ord) = count(distinct p.key) and not bool_or(p.seen) as keys_new,
      array_agg(p.grant_id order by p.granted_to) filter (where p.grant_id is not null) as grant_ids,
      array_agg(p.remaining order by p.granted_to) filter (where p.grant_id is not null) as grant_remaining,
      array_agg(p.granted_to order by p.granted_to) filter (where p.grant_id is not null) as grant_granted_to,
      bool_or(p.available is not null) as found, max(p.available) as available, max(p.debt) as debt,
      bool_or(p.limited) as limited, bool_or(p.limits_found) as limits_found, max(p.per_day) as per_day,
      max(p.per_month) as per_month, max(p.spent_day) as spent_day, max(p.spent_month) as spent_month
    from tally_usage_batch_reads(p_accounts, p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors,
      p_carries_after, p_now) p
    group by p.account_id) t
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_at_once(p_keys_new boolean, p_entitled boolean, p_total bigint, p_available bigint, p_grant_count integer, p_limited boolean, p_limits_found boolean, p_per_day bigint, p_per_month bigint, p_spent_day bigint, p_spent_month bigint)
 RETURNS boolean
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select coalesce(p_keys_new and p_entitled and p_total <= p_available and p_grant_count <= 100
    and (not p_limited or (p_limits_found
      and (p_per_day is null or p_spent_day + p_total < p_per_day)
      and (p_per_month is null or p_spent_month + p_total < p_per_month))), false)
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_check(p_count integer, p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[])
 RETURNS void
 LANGUAGE plpgsql
AS $function$
begin
  if coalesce(cardinality(p_amounts), 0) <> p_count or coalesce(cardinality(p_keys), 0) <> p_count
     or coalesce(cardinality(p_hashes), 0) <> p_count or coalesce(cardinality(p_references), 0) <> p_count
     or coalesce(cardinality(p_actors), 0) <> p_count
     or (p_meters is not null and (cardinality(p_meters) <> p_count or coalesce(cardinality(p_quantities), 0) <> p_count))
     or exists (select 1 from unnest(p_amounts, p_meters, p_quantities) as e(amount, meter, quantities)
                where (e.meter is null and (e.amount is null or e.amount <= 0 or e.quantities is not null))
                   or (e.meter is not null and (e.amount is distinct from 0 or e.quantities is null))) then
    raise exception 'usage batch: % events with arrays of other lengths, amounts that are not positive, or priced events with an amount', p_count
      using errcode = 'TX001';
  end if;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_events(p_account_ids text[], p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[])
 RETURNS TABLE(account_id text, ord integer, amount bigint, spent_to bigint, key text, hash text, reference jsonb, actor text, carry_after numeric, seen boolean)
 LANGUAGE sql
 STABLE
AS $function$
  select e.account_id, e.ord::integer, e.amount,
    (sum(e.amount) over (partition by e.account_id order by e.ord rows unbounded preceding))::bigint,
    e.key, e.hash, coalesce(e.reference, '{}'::jsonb), e.actor, e.carry_after, prior.seen is not null
  from unnest(p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors, p_carries_after)
    with ordinality as e(account_id, amount, key, hash, reference, actor, carry_after, ord)
  left join lateral (
    select true as seen from request_keys k where k.account_id = e.account_id and k.key = e.key
    union all
    select true from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key
    limit 1) prior on true
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_one_by_one(p_results jsonb[], p_account_ids text[], p_amounts bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[], p_now timestamp with time zone)
 RETURNS jsonb[]
 LANGUAGE plpgsql
AS $function$
declare
  v_results jsonb[] := p_results;
  v_position integer;
begin
  for v_position in
    select r.ord from unnest(p_results, p_account_ids) with ordinality as r(result, account_id, ord)
    where r.result is null order by r.account_id collate "C", r.ord
  loop
    if p_meters[v_position] is null then
      v_results[v_position] := tally_usage(p_account_ids[v_position], p_amounts[v_position],
        p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), p_now);
    else
      v_results[v_position] := tally_priced_usage(p_account_ids[v_position], p_meters[v_position],
        p_quantities[v_position], p_keys[v_position], p_hashes[v_position], p_actors[v_position],
        coalesce(p_references[v_position], '{}'::jsonb), p_now);
    end if;
  end loop;
  return v_results;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_price(p_account_ids text[], p_amounts bigint[], p_meters text[], p_quantities jsonb[], p_now timestamp with time zone, OUT p_charges bigint[], OUT p_costs numeric[], OUT p_rate_card_ids text[], OUT p_rate_card_versions integer[], OUT p_carries_after numeric[])
 RETURNS record
 LANGUAGE plpgsql
AS $function$
declare
  v_carries numeric[];
begin
  select * into p_costs, p_rate_card_ids, p_rate_card_versions, v_carries
    from tally_price_events(p_account_ids, p_meters, p_quantities, p_now);
  if exists (select 1 from unnest(p_costs) c where c > tally_spend_credits_max()) then
    raise exception 'a spend of this batch would cost more credits than a balance can hold (%)', tally_spend_credits_max()
      using errcode = 'TP400', detail = 'quantities';
  end if;
  select array_agg(case when e.meter is null then e.amount
      else (floor(e.priced_to) - floor(e.priced_to - e.cost))::bigint end order by e.ord),
    array_agg(e.priced_to - floor(e.priced_to) order by e.ord)
  into p_charges, p_carries_after
  from (
    -- The carry the account starts the batch with, plus the costs of its priced spends up to this
    -- one (NULL for a spend of credits).
    select s.ord, s.amount, s.meter, s.cost,
      s.carry + sum(s.cost) over (partition by s.account_id order by s.ord rows unbounded preceding) as priced_to
    from unnest(p_account_ids, p_amounts, p_meters, p_costs, v_carries)
      with ordinality as s(account_id, amount, meter, cost, carry, ord)) e;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_reads(p_accounts text[], p_account_ids text[], p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_carries_after numeric[], p_now timestamp with time zone)
 RETURNS TABLE(account_id text, ord integer, amount bigint, spent_to bigint, key text, hash text, reference jsonb, actor text, carry_after numeric, seen boolean, grant_id bigint, remaining bigint, granted_to bigint, available bigint, debt bigint, limited boolean, limits_found boolean, per_day bigint, per_month bigint, spent_day bigint, spent_month bigint)
 LANGUAGE sql
 STABLE
AS $function$
  select e.*, null::bigint, null::bigint, null::bigint, null::bigint, null::bigint, null::boolean, null::boolean,
    null::bigint, null::bigint, null::bigint, null::bigint
  from tally_usage_batch_events(p_account_ids, p_charges, p_keys, p_hashes, p_references, p_actors, p_carries_after) e
  union all
  select g.account_id, null, null, null, null, null, null, null, null, null, g.id, g.remaining,
    (sum(g.remaining) over (partition by g.account_id order by g.priority, g.expires_at, g.created_at, g.id
      rows unbounded preceding))::bigint,
    null, null, null, null, null, null, null, null
  from grants g
  where g.account_id = any(p_accounts) and g.live and (g.expires_at is null or g.expires_at > p_now)
  union all
  select a.id, null, null, null, null, null, null, null, null, null, null, null, null, a.available, a.debt,
    a.spend_limited, l.account_id is not null, l.per_day, l.per_month,
    case when l.day < (p_now at time zone 'UTC')::date then 0 else l.spent_day end,
    case when l.month < date_trunc('month', p_now at time zone 'UTC')::date then 0 else l.spent_month end
  from accounts a left join spend_limits l on a.spend_limited and l.account_id = a.id
  where a.id = any(p_accounts)
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_settle(p_accounts text[], p_account_ids text[], p_keys text[], p_now timestamp with time zone)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
declare
  v_account text;
begin
  for v_account in
    select d.account_id from (
      select h.account_id from holds h
        where h.status = 'pending' and h.expires_at <= p_now and h.account_id = any(p_accounts)
      union
      select g.account_id from grants g
        where g.live and g.expires_at <= p_now and g.account_id = any(p_accounts)) d
    where exists (
      select 1 from unnest(p_account_ids, p_keys) as e(account_id, key)
      where e.account_id = d.account_id
        and not exists (select 1 from request_keys k where k.account_id = e.account_id and k.key = e.key)
        and not exists (select 1 from entries n where n.account_id = e.account_id and n.idempotency_key = 'request:' || e.key))
    order by d.account_id collate "C"
  loop
    perform tally_settle(v_account, p_now);
  end loop;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_take(p_amount bigint, p_spent_to bigint, p_grant_ids bigint[], p_grant_remaining bigint[], p_grant_granted_to bigint[])
 RETURNS TABLE(grant_ids bigint[], grant_credits bigint[], credits bigint)
 LANGUAGE sql
 IMMUTABLE
AS $function$
  select array_agg(o.id order by o.position), array_agg(-o.credits order by o.position), coalesce(sum(o.credits), 0)::bigint
  from (select g.id, g.position,
          least(p_spent_to, g.granted_to) - greatest(p_spent_to - p_amount, g.granted_to - g.remaining) as credits
        from unnest(p_grant_ids, p_grant_remaining, p_grant_granted_to) with ordinality as g(id, remaining, granted_to, position)
        where p_amount > 0 and g.granted_to - g.remaining < p_spent_to and p_spent_to - p_amount < g.granted_to) o
$function$;

CREATE OR REPLACE FUNCTION public.tally_usage_batch_write(p_accounts text[], p_per_event text[], p_account_ids text[], p_charges bigint[], p_keys text[], p_hashes text[], p_references jsonb[], p_actors text[], p_meters text[], p_quantities jsonb[], p_costs numeric[], p_rate_card_ids text[], p_rate_card_versions integer[], p_carries_after numeric[], p_now timestamp with time zone, OUT p_results jsonb[], OUT p_below_top_up text[])
 RETURNS record
 LANGUAGE plpgsql
AS $function$
declare
  v_entry_sequence regclass := pg_get_serial_sequence('entries', 'id')::regclass;
  v_uncovered bigint;
begin
  with account as (
    select * from tally_usage_batch_accounts(p_accounts, p_per_event, p_account_ids, p_charges, p_keys, p_hashes,
      p_references, p_actors, p_carries_after, p_now)
  ),
  numbered as (
    select s.*, nextval(v_entry_sequence) as entry_id from (
      select c.id as account_id, c.available, c.debt, s.*, t.*
      from account c
      cross join lateral unnest(c.event_ords, c.event_amounts, c.event_spent_to, c.event_keys, c.event_hashes,
        c.event_references, c.event_actors) as s(ord, amount, spent_to, key, hash, reference, actor)
      cross join lateral tally_usage_batch_take(s.amount, s.spent_to, c.grant_ids, c.grant_remaining, c.grant_granted_to) t
      where c.at_once
      order by c.id collate "C", s.ord) s
  ),
  taken_from_grants as (
    update grants g set remaining = g.remaining - t.credits
    from (select u.id, -sum(u.credits)::bigint as credits
          from numbered n cross join lateral unnest(n.grant_ids, n.grant_credits) as u(id, credits) group by u.id) t
    where g.id = t.id
  ),
  charged as (
    update accounts a set available = a.available - c.total, carry = coalesce(c.carry_after, a.carry), updated_at = p_now
    from account c where c.at_once and a.id = c.id
    returning a.id, a.available < a.top_up_threshold as below_top_up
  ),
  -- As tally_spend_limits_take would leave them after each spend in turn: windows move forward
  -- only, and each counts the batch's total.
  counted as (
    update spend_limits l set day = greatest(l.day, (p_now at time zone 'UTC')::date), spent_day = c.spent_day + c.total,
      month = greatest(l.month, date_trunc('month', p_now at time zone 'UTC')::date), spent_month = c.spent_month + c.total
    from account c where c.at_once and c.limited and l.account_id = c.id
  ),
  event as (
    select * from unnest(p_meters, p_quantities, p_costs, p_rate_card_ids, p_rate_card_versions, p_carries_after)
      with ordinality as e(meter, quantities, cost, rate_card_id, rate_card_version, carry_after, ord)
  ),
  written as (
    insert into entries (id, account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key,
      reference, actor, payload_hash, created_at, meter, quantities, rate_card_id, rate_card_version, cost, carry_after)
      overriding system value
    select n.entry_id, n.account_id, 'usage', -n.amount, n.available - n.spent_to - n.debt,
      coalesce(n.grant_ids, '{}'), coalesce(n.grant_credits, '{}'), 'request:' || n.key, n.reference,
      n.actor, n.hash, p_now, e.meter, e.quantities, e.rate_card_id, e.rate_card_version, e.cost, e.carry_after
    from numbered n left join event e on e.ord = n.ord
  ),
  answer as (
    select n.ord, jsonb_build_object('status', 200, 'body', jsonb_build_object('entry_id', 'entry_' || n.entry_id,
      'amount', n.amount, 'available', n.available - n.spent_to, 'replayed', false)
      || tally_priced_answer(e.cost, e.rate_card_id, e.rate_card_version)) as result
    from numbered n left join event e on e.ord = n.ord
    union all
    select u.ord, case when c.found then null else jsonb_build_object('status', 404,
      'body', tally_error('account_not_found', 'no account with id ' || c.id)) end
    from account c cross join lateral unnest(c.event_ords) as u(ord)
    where not c.at_once
  )
  select (select array_agg(result order by ord) from answer),
    (select count(*) from numbered where credits is distinct from amount),
    (select array_agg(id order by id collate "C") from charged where below_top_up)
  into p_results, v_uncovered, p_below_top_up;
  if v_uncovered > 0 then
    raise exception 'invariant broken: % spends of a usage batch exceed the live grants of their accounts', v_uncovered
      using errcode = 'TX001';
  end if;
end $function$;

CREATE OR REPLACE FUNCTION public.tally_void(p_hold_id bigint, p_actor text, p_now timestamp with time zone)
 RETURNS jsonb
 LANGUAGE plpgsql
AS $function$
declare
  v_now timestamptz := coalesce(p_now, now());
  v_hold holds := tally_lock_pending_hold(p_hold_id, v_now);
  v_available bigint;
begin
  perform tally_release(v_hold, 0, 'voided', p_actor, v_now);
  perform tally_settle(v_hold.account_id, v_now);
  select available into v_available from accounts where id = v_hold.account_id;
  return jsonb_build_object('released', v_hold.amount, 'available', v_available);
end $function$;
