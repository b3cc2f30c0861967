import { z } from 'zod';
import { eventTypes } from '../events/event-log.js';

/**
 * The objects several answers share (SPEC: "a grant reads ...", "an entry ..."), as zod schemas
 * with a name. The OpenAPI description lists each once under components.schemas, and the typed
 * client's types take their names from there (Grant, Entry, Account...).
 */
export const namedSchemas: { name: string; schema: z.ZodType }[] = [];

function named<T extends z.ZodType>(name: string, schema: T): T {
  namedSchemas.push({ name, schema });
  return schema;
}

export const creditsSchema = z.int().min(0).max(Number.MAX_SAFE_INTEGER);
export const signedCreditsSchema = z.int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER);
/** Timestamps are ISO 8601 in UTC with milliseconds (`2030-01-31T12:00:00.000Z`). */
export const timestampSchema = z.iso.datetime();
/** A JSON object whose fields Tally does not fix (references, metadata, Stripe's words). */
export const jsonObjectSchema = z.record(z.string(), z.unknown());

/**
 * A sum of credits over accounts or days: a number while it is a safe integer, past that its
 * exact decimal text (the database sums in numeric; a JSON number would round it).
 */
export const creditsSumSchema = z.union([creditsSchema, z.string().regex(/^[0-9]+$/)]);

export const metadataValueSchema = z.union([z.string(), z.number(), z.boolean(), z.null()]);

export const grantSchema = named(
  'Grant',
  z.object({
    id: z.string(),
    source: z.enum(['subscription', 'trial', 'purchase', 'promo', 'admin', 'rollover', 'recurring']),
    amount: creditsSchema,
    remaining: creditsSchema,
    priority: z.int().min(0).max(1000),
    expires_at: timestampSchema.nullable(),
    created_at: timestampSchema,
    reference: jsonObjectSchema,
  }),
);

export const entrySchema = named(
  'Entry',
  z.object({
    id: z.string(),
    kind: z.enum(['grant', 'usage', 'hold', 'capture', 'release', 'expire', 'clawback', 'restore', 'adjustment']),
    amount: signedCreditsSchema,
    balance_after: signedCreditsSchema,
    grant_ids: z.array(z.string()),
    idempotency_key: z.string(),
    reference: jsonObjectSchema,
    actor: z.enum(['app', 'admin', 'stripe', 'system']),
    reason: z.string().nullable(),
    created_at: timestampSchema,
    // A priced usage, hold or capture: what it priced, by which version, its exact cost and (on
    // usage and capture) the carry it left, so that its charge can be recomputed.
    meter: z.string().optional(),
    quantities: z.record(z.string(), creditsSchema).optional(),
    rate_card: z.object({ id: z.string(), version: z.int().positive() }).optional(),
    cost: z
      .string()
      .regex(/^[0-9]+(\.[0-9]+)?$/)
      .optional(),
    carry_after: z
      .string()
      .regex(/^0(\.[0-9]+)?$/)
      .nullable()
      .optional(),
  }),
);

export const balanceSchema = named(
  'Balance',
  z.object({ account_id: z.string(), available: creditsSchema, held: creditsSchema, debt: creditsSchema }),
);

const accountFields = {
  id: z.string(),
  email: z.string().nullable(),
  name: z.string().nullable(),
  metadata: z.record(z.string(), metadataValueSchema),
  stripe_customer_id: z.string().nullable(),
  created_at: timestampSchema,
};

/** An account as PUT answers it. */
export const accountSchema = named('Account', z.object(accountFields));

export const subscriptionSchema = named(
  'Subscription',
  z.object({
    id: z.string(),
    status: z.string(),
    plan_id: z.string().nullable(),
    interval: z.enum(['month', 'year']).nullable(),
    current_period_start: timestampSchema.nullable(),
    current_period_end: timestampSchema.nullable(),
    cancel_at_period_end: z.boolean(),
    trial_end: timestampSchema.nullable(),
  }),
);

/** An account as GET answers it: with its subscription, trial, live grants and balance. */
export const spendLimitsSchema = z.object({
  account_id: z.string(),
  per_day: creditsSchema.nullable(),
  per_month: creditsSchema.nullable(),
  spent: z.object({ day: creditsSchema, month: creditsSchema }),
  resets_at: z.object({ day: timestampSchema, month: timestampSchema }),
});

export const accountDetailSchema = named(
  'AccountDetail',
  z.object({
    ...accountFields,
    flagged: z.boolean(),
    subscription: subscriptionSchema.nullable(),
    trial: z
      .object({ grant_id: z.string(), credits: creditsSchema, remaining: creditsSchema, expires_at: timestampSchema.nullable() })
      .nullable(),
    grants: z.array(grantSchema),
    balance: balanceSchema,
    limits: spendLimitsSchema.omit({ account_id: true }),
    low_balance_threshold: z.int().positive().nullable(),
    auto_top_up: z
      .object({
        enabled: z.boolean(),
        threshold: z.int().positive(),
        pack_id: z.string(),
        max_per_month: z.int().positive(),
        failures_in_row: z.int().min(0),
        updated_at: timestampSchema,
      })
      .nullable(),
  }),
);

export const eventSchema = named(
  'Event',
  z.object({
    id: z.string(),
    sequence: z.int().positive(),
    type: z.enum(eventTypes),
    account_id: z.string().nullable(),
    created_at: timestampSchema,
    data: jsonObjectSchema,
  }),
);

export const webhookEndpointSchema = named(
  'WebhookEndpoint',
  z.object({
    id: z.string(),
    url: z.string(),
    event_types: z.array(z.enum(eventTypes)).nullable(),
    status: z.enum(['enabled', 'disabled']),
    disabled_at: timestampSchema.nullable(),
    disabled_reason: z.string().nullable(),
    created_at: timestampSchema,
    /** Events not yet delivered to it. */
    pending: creditsSchema,
    oldest_failing: z
      .object({
        sequence: z.int().positive(),
        account_id: z.string().nullable(),
        attempts: z.int().min(0),
        first_failed_at: timestampSchema.nullable(),
        next_attempt_at: timestampSchema.nullable(),
        last_error: z.string().nullable(),
      })
      .nullable(),
    last_delivered_sequence: z.int().positive().nullable(),
  }),
);

/** A hold as the operators' reads list it (the app's calls answer only its id and amounts). */
export const holdSchema = named(
  'Hold',
  z.object({
    id: z.string(),
    amount: creditsSchema,
    status: z.enum(['pending', 'captured', 'voided', 'expired']),
    /** Null while pending; once resolved, captured plus released is the amount. */
    captured: creditsSchema.nullable(),
    released: creditsSchema.nullable(),
    idempotency_key: z.string(),
    expires_at: timestampSchema,
    created_at: timestampSchema,
    resolved_at: timestampSchema.nullable(),
  }),
);

/** A Stripe event as the webhook inbox stores it, and where its processing stands. */
export const inboxEventSchema = named(
  'InboxEvent',
  z.object({
    id: z.string(),
    type: z.string(),
    status: z.enum(['pending', 'processed', 'ignored', 'failed']),
    attempts: z.int().min(0),
    created: timestampSchema,
    received_at: timestampSchema,
    next_attempt_at: timestampSchema,
    processed_at: timestampSchema.nullable(),
    last_error: z.string().nullable(),
    ignored_reason: z.string().nullable(),
    account_id: z.string().nullable(),
  }),
);

/** An exact cost in credits as a decimal string (`"0.0125"`): computed in numeric, never a float. */
export const costSchema = z.string().regex(/^[0-9]+(\.[0-9]+)?$/);

/** The rate card version that priced a spend. */
export const rateCardReferenceSchema = z.object({ id: z.string(), version: z.int().positive() });

/** Credits per unit, per meter and dimension, as exact decimal strings. */
export const ratesAnswerSchema = z.record(z.string(), z.record(z.string(), z.string().regex(/^[0-9]+(\.[0-9]+)?$/)));

/** One published version of a rate card; versions are never edited or deleted. */
export const rateCardVersionSchema = named(
  'RateCardVersion',
  z.object({
    id: z.string(),
    version: z.int().positive(),
    effective_at: timestampSchema,
    rates: ratesAnswerSchema,
    published_at: timestampSchema,
  }),
);

/**
 * What an account may use: its plan and where that comes from, the meters a priced spend may
 * name, the app's features, the rate card that prices its spends, and its plans' recurring grants.
 */
export const entitlementsSchema = named(
  'Entitlements',
  z.object({
    plan_id: z.string().nullable(),
    source: z.enum(['subscription', 'trial', 'free', 'none']),
    meters: z.union([z.literal('all'), z.array(z.string())]),
    features: z.record(z.string(), z.union([z.number(), z.boolean(), z.string()])),
    rate_card: rateCardReferenceSchema.nullable(),
    recurring_grants: z.array(z.object({ plan_id: z.string(), credits: creditsSchema, every: z.enum(['day', 'week', 'month']) })),
  }),
);
