import { z } from 'zod';
import {
  creditsSchema,
  creditsSumSchema,
  entitlementsSchema,
  entrySchema,
  grantSchema,
  holdSchema,
  inboxEventSchema,
  jsonObjectSchema,
  rateCardVersionSchema,
  signedCreditsSchema,
  timestampSchema,
} from './entities.js';

/**
 * What the dashboard's reads answer (dashboard/reads.ts), as zod schemas: the routes declare
 * them, the OpenAPI description publishes them, and the conformance test checks real answers
 * against them. Each mirrors its read's SQL column for column; a count is a non-negative
 * integer, a sum over accounts or days may be a decimal string (creditsSumSchema). They are
 * HTTP's answer shapes, built on the API's entities, so they live in http/ beside entities.ts:
 * dashboard/ stays below http/ and imports nothing from it.
 */

const countSchema = z.int().min(0);
/** Seconds between receiving a Stripe event and processing it, to the millisecond; null when none was processed. */
const lagSecondsSchema = z.number().min(0).nullable();

export const callerSchema = z.object({
  role: z.enum(['admin', 'viewer']),
  /** False for the viewer key: the page shows no actions. */
  can_act: z.boolean(),
  stripe_configured: z.boolean(),
});

export const breakerStateSchema = z.object({
  state: z.enum(['closed', 'open', 'half_open', 'isolated', 'not_configured']),
  failures: z.int().min(0),
  opened_at: timestampSchema.nullable(),
});

export const overviewSchema = z.object({
  as_of: timestampSchema,
  accounts: z.object({ count: countSchema, in_debt: countSchema, flagged: countSchema }),
  credits: z.object({ available: creditsSumSchema, held: creditsSumSchema, debt: creditsSumSchema, outstanding: creditsSumSchema }),
  webhooks: z.object({
    window_hours: z.int().positive(),
    received: countSchema,
    processed: countSchema,
    ignored: countSchema,
    failed: countSchema,
    pending: countSchema,
    lag_seconds_median: lagSecondsSchema,
    lag_seconds_95th: lagSecondsSchema,
    lag_seconds_max: lagSecondsSchema,
    /** The event types received in the window, sorted. */
    types: z.array(z.string()),
    failed_total: countSchema,
    pending_total: countSchema,
    oldest_pending_received_at: timestampSchema.nullable(),
  }),
  alerts: z.object({ open: countSchema, open_critical: countSchema, resolved: countSchema }),
  last_reconciliation: z
    .object({
      run_id: z.int().positive(),
      trigger: z.enum(['cli', 'api', 'schedule']),
      with_stripe: z.boolean(),
      status: z.enum(['running', 'done', 'failed']),
      finding_count: countSchema.nullable(),
      error: z.string().nullable(),
      started_at: timestampSchema,
      finished_at: timestampSchema.nullable(),
    })
    .nullable(),
  stripe: z.object({ configured: z.boolean(), breaker: breakerStateSchema }),
});

export const creditTotalsSchema = z.object({
  days: z.array(
    z.object({
      day: z.iso.date(),
      granted: creditsSumSchema,
      spent: creditsSumSchema,
      expired: creditsSumSchema,
      clawed_back: creditsSumSchema,
      adjusted_down: creditsSumSchema,
    }),
  ),
});

export const accountSearchSchema = z.object({
  accounts: z.array(
    z.object({
      id: z.string(),
      email: z.string().nullable(),
      name: z.string().nullable(),
      stripe_customer_id: z.string().nullable(),
      /** Grants past their expiry that the sweep has not expired yet are left out, as the balance call does. */
      available: creditsSchema,
      held: creditsSchema,
      debt: creditsSchema,
      flagged: z.boolean(),
      created_at: timestampSchema,
      updated_at: timestampSchema,
      /** The newest subscription's status; null without one. */
      subscription_status: z.string().nullable(),
    }),
  ),
  next_offset: z.int().positive().nullable(),
});

const grantWithStateSchema = grantSchema.extend({ state: z.enum(['live', 'used_up', 'expired']) });

export const accountGrantsSchema = z.object({
  grants: z.array(grantWithStateSchema),
  next_offset: z.int().positive().nullable(),
});

export const accountHoldsSchema = z.object({
  holds: z.array(holdSchema),
  /** The cursor of the next page (older holds); null on the last page. */
  next_cursor: z
    .string()
    .regex(/^[0-9]{1,18}$/)
    .nullable(),
});

export const balanceHistorySchema = z.object({
  days: z.array(z.object({ day: z.iso.date(), balance: signedCreditsSchema.nullable() })),
});

export const inboxEventDetailSchema = inboxEventSchema.extend({
  api_version: z.string().nullable(),
  /** Null for the viewer key: Stripe's objects carry emails, names and billing addresses. */
  payload: jsonObjectSchema.nullable(),
});

export const entryWithAccountSchema = entrySchema.extend({ account_id: z.string() });

/** A version as the dashboard lists it: the API's shape, and who published it. */
const publishedVersionSchema = rateCardVersionSchema.extend({
  /** `catalog`: the plan catalog at start; `admin`: an operator (PUT /v1/admin/rate-cards/{id}). */
  source: z.enum(['catalog', 'admin']),
});

export const rateCardsOverviewSchema = z.object({
  as_of: timestampSchema,
  rate_cards: z.array(
    z.object({
      id: z.string(),
      /** The card of accounts whose plan names none (the catalog's default_rate_card). */
      default: z.boolean(),
      /** The catalog's plans that name this card. */
      plans: z.array(z.string()),
      /** The version in effect now; null before the first takes effect. */
      current: publishedVersionSchema.nullable(),
      /** The version that takes effect next; null when none is scheduled. */
      next: publishedVersionSchema.nullable(),
      /** The newest published versions, newest first (at most `versions`). */
      versions: z.array(publishedVersionSchema.extend({ state: z.enum(['current', 'next', 'scheduled', 'superseded']) })),
      versions_total: countSchema,
    }),
  ),
});

/** An exact cost in credits: a decimal string from PostgreSQL numeric, never a float. */
const costSchema = z.string().regex(/^[0-9]+(\.[0-9]+)?$/);

export const meterSpendSchema = z.object({
  /** The first and last UTC day of the window, both included. */
  from: z.iso.date(),
  to: z.iso.date(),
  /** The window's totals per meter, most credits first; `meter` is null for spends of a plain amount. */
  meters: z.array(z.object({ meter: z.string().nullable(), credits: creditsSumSchema, cost: costSchema.nullable(), spends: countSchema })),
  days: z.array(
    z.object({
      day: z.iso.date(),
      meters: z.array(z.object({ meter: z.string().nullable(), credits: creditsSumSchema, cost: costSchema.nullable() })),
    }),
  ),
});

/**
 * An account's plan as its entitlements say, with the catalog's names (null for no plan, or a
 * plan the catalog no longer has), and each recurring grant's current period and the grant of
 * that period, null until the account's first call of the period gives it.
 */
export const accountPlanSchema = entitlementsSchema.extend({
  plan_name: z.string().nullable(),
  recurring_grants: z.array(
    z.object({
      plan_id: z.string(),
      plan_name: z.string().nullable(),
      credits: creditsSchema,
      every: z.enum(['day', 'week', 'month']),
      /** The UTC day the period starts (a Monday for a week, the 1st for a month). */
      period_start: z.iso.date(),
      period_end: timestampSchema,
      grant: grantWithStateSchema.nullable(),
    }),
  ),
});

export const accountsPerPlanSchema = z.object({
  /** Every account. */
  accounts: countSchema,
  /**
   * Every plan of the catalog in its order, then plans that subscriptions name but the catalog no
   * longer has (name null), then no plan (plan_id null) last.
   */
  plans: z.array(
    z.object({
      plan_id: z.string().nullable(),
      name: z.string().nullable(),
      /** The catalog's free plan: the plan of accounts without a subscription. */
      free: z.boolean(),
      accounts: countSchema,
      /** Of `accounts`, those on the plan through a subscription (active or past due), and through a trial. */
      subscription: countSchema,
      trial: countSchema,
    }),
  ),
});
