import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { meterCountMax, meterIdSchema, meterSchema, rateCardIdSchema, rateIssues, ratesSchema } from '../pricing/meters.js';

/**
 * The plan catalog: which Stripe prices are plans and packs, and how many credits each gives.
 * Validated once at start; every error names the field, so a bad catalog stops the start with
 * a message an operator can act on.
 */
const creditsSchema = z.int().positive().max(Number.MAX_SAFE_INTEGER);
const priceIdSchema = z.string().min(1).max(255);

const featureCountMax = 100;
const recurringGrantCountMax = 3;
const featureNamePattern = /^[A-Za-z0-9_.:-]{1,64}$/;
const recurringCadences = ['day', 'week', 'month'] as const;

/**
 * What a plan lets its accounts use: the meters a priced spend may name (`"all"`, or a list),
 * and the app's own features (numbers, booleans, strings) that Tally serves but never reads.
 * Left out, a plan is entitled to every meter and has no features.
 */
const entitlementsSchema = z.strictObject({
  meters: z.union([z.literal('all'), z.array(meterIdSchema).max(meterCountMax)], { error: '"all" or a list of meter ids' }).default('all'),
  features: z
    .record(
      z.string(),
      z.union([z.number().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER), z.boolean(), z.string().max(500)], {
        error: 'a number, a boolean or a string of at most 500 characters',
      }),
    )
    .superRefine((features, context) => {
      const names = Object.keys(features);
      if (names.length > featureCountMax) context.addIssue({ code: 'custom', message: `at most ${featureCountMax} features` });
      for (const name of names.filter((candidate) => !featureNamePattern.test(candidate))) {
        context.addIssue({ code: 'custom', path: [name], message: 'a feature name is 1 to 64 characters of A-Za-z0-9_.:-' });
      }
    })
    .default({}),
});

/** Credits given once per UTC day, ISO week or calendar month while an account is on the plan. */
const recurringGrantSchema = z.strictObject({
  credits: creditsSchema,
  every: z.enum(recurringCadences, { error: 'one of day, week, month' }),
});

const planSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (1 to 64)'),
  name: z.string().min(1).max(200),
  /**
   * The plan of accounts without a subscription (at most one plan, with no prices: nobody buys
   * it). Its credits come only from recurring grants.
   */
  free: z.literal(true, { error: 'true, or left out' }).optional(),
  // A free plan has neither prices nor credits per month; every other plan needs both (checked
  // below, naming the field).
  prices: z.strictObject({ month: priceIdSchema.optional(), year: priceIdSchema.optional() }).default({}),
  credits_per_month: z.int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
  rollover: z.strictObject({ max_credits: creditsSchema }).optional(),
  trial: z.strictObject({ days: z.int().min(1).max(730), credits: creditsSchema }).optional(),
  /** The rate card that prices this plan's usage; left out, the catalog's default_rate_card. */
  rate_card: rateCardIdSchema.optional(),
  entitlements: entitlementsSchema.optional(),
  recurring_grants: z.array(recurringGrantSchema).max(recurringGrantCountMax).default([]),
});

const packSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (1 to 64)'),
  price: priceIdSchema,
  credits: creditsSchema,
});

const rateCardSchema = z.strictObject({ id: rateCardIdSchema, rates: ratesSchema });

const catalogShape = z.strictObject({
  plans: z.array(planSchema),
  credit_packs: z.array(packSchema).default([]),
  // Priced usage: what a spend may name as its meter, and the credits per unit of each
  // dimension on each card (the cards' first versions; later ones live in the database).
  meters: z.array(meterSchema).max(meterCountMax).default([]),
  rate_cards: z.array(rateCardSchema).default([]),
  default_rate_card: rateCardIdSchema.optional(),
  // Operators' grants and adjustments are bounded, so that a slip of the keyboard cannot
  // grant more credits than a balance can hold (balances stay safe integers).
  limits: z
    .strictObject({
      admin_adjustment_credits_max: creditsSchema.default(100_000),
      admin_grant_credits_max: creditsSchema.default(1_000_000),
    })
    .default({ admin_adjustment_credits_max: 100_000, admin_grant_credits_max: 1_000_000 }),
});

const catalogSchema = catalogShape.superRefine((catalog, context) => {
  const seenPrices = new Map<string, string>();
  const claimPrice = (price: string | undefined, owner: string, path: (string | number)[]) => {
    if (price === undefined) return;
    const previous = seenPrices.get(price);
    if (previous !== undefined) {
      context.addIssue({ code: 'custom', path, message: `price ${price} is already used by ${previous}` });
    }
    seenPrices.set(price, owner);
  };
  const seenIds = new Set<string>();
  catalog.plans.forEach((plan, index) => {
    if (seenIds.has(plan.id)) context.addIssue({ code: 'custom', path: ['plans', index, 'id'], message: `duplicate id ${plan.id}` });
    seenIds.add(plan.id);
    claimPrice(plan.prices.month, `plan ${plan.id}`, ['plans', index, 'prices', 'month']);
    claimPrice(plan.prices.year, `plan ${plan.id}`, ['plans', index, 'prices', 'year']);
  });
  checkPlanKinds(catalog, context);
  catalog.credit_packs.forEach((pack, index) => {
    if (seenIds.has(pack.id)) context.addIssue({ code: 'custom', path: ['credit_packs', index, 'id'], message: `duplicate id ${pack.id}` });
    seenIds.add(pack.id);
    claimPrice(pack.price, `pack ${pack.id}`, ['credit_packs', index, 'price']);
  });
  checkPricing(catalog, context);
});

/**
 * Meters and rate cards: ids are distinct, every card prices exactly the meters and their
 * dimensions, a catalog with meters names its default card, and a plan names a card that exists.
 */
function checkPricing(catalog: z.infer<typeof catalogShape>, context: z.core.$RefinementCtx): void {
  const meterIds = new Set<string>();
  catalog.meters.forEach((meter, index) => {
    if (meterIds.has(meter.id)) context.addIssue({ code: 'custom', path: ['meters', index, 'id'], message: `duplicate meter ${meter.id}` });
    meterIds.add(meter.id);
  });
  const cardIds = new Set<string>();
  catalog.rate_cards.forEach((card, index) => {
    if (cardIds.has(card.id))
      context.addIssue({ code: 'custom', path: ['rate_cards', index, 'id'], message: `duplicate rate card ${card.id}` });
    cardIds.add(card.id);
    for (const issue of rateIssues(card.rates, catalog.meters)) {
      context.addIssue({ code: 'custom', path: ['rate_cards', index, 'rates', ...issue.path], message: issue.message });
    }
  });
  if (catalog.meters.length > 0 && catalog.rate_cards.length === 0) {
    context.addIssue({ code: 'custom', path: ['rate_cards'], message: 'meters need at least one rate card to price them' });
  }
  if (catalog.default_rate_card === undefined && catalog.rate_cards.length > 0) {
    context.addIssue({
      code: 'custom',
      path: ['default_rate_card'],
      message: 'required with rate cards: the card of accounts whose plan names none',
    });
  }
  if (catalog.default_rate_card !== undefined && !cardIds.has(catalog.default_rate_card)) {
    context.addIssue({ code: 'custom', path: ['default_rate_card'], message: `no rate card ${catalog.default_rate_card}` });
  }
  catalog.plans.forEach((plan, index) => {
    if (plan.rate_card !== undefined && !cardIds.has(plan.rate_card)) {
      context.addIssue({ code: 'custom', path: ['plans', index, 'rate_card'], message: `no rate card ${plan.rate_card}` });
    }
  });
}

/**
 * Paid plans and the free plan: a paid plan has a price and credits per month; the free plan (at
 * most one) has neither, nor a trial or a rollover, which only a paid period could give. A plan's
 * recurring grants have one per cadence (their key names the cadence), and its entitled meters
 * are meters of the catalog, each once.
 */
function checkPlanKinds(catalog: z.infer<typeof catalogShape>, context: z.core.$RefinementCtx): void {
  let freePlan: string | undefined;
  const meterIds = new Set(catalog.meters.map((meter) => meter.id));
  catalog.plans.forEach((plan, index) => {
    const at = (...path: (string | number)[]) => ['plans', index, ...path];
    if (plan.free === true) {
      if (freePlan !== undefined) {
        context.addIssue({ code: 'custom', path: at('free'), message: `only one plan may be free (${freePlan} already is)` });
      }
      freePlan ??= plan.id;
      if (plan.prices.month !== undefined || plan.prices.year !== undefined) {
        context.addIssue({ code: 'custom', path: at('prices'), message: 'a free plan has no prices' });
      }
      if (plan.credits_per_month !== 0) {
        context.addIssue({
          code: 'custom',
          path: at('credits_per_month'),
          message: 'a free plan has no credits per month: give it recurring_grants',
        });
      }
      if (plan.trial !== undefined) context.addIssue({ code: 'custom', path: at('trial'), message: 'a free plan has no trial' });
      if (plan.rollover !== undefined) context.addIssue({ code: 'custom', path: at('rollover'), message: 'a free plan has no rollover' });
    } else {
      if (plan.prices.month === undefined && plan.prices.year === undefined) {
        context.addIssue({ code: 'custom', path: at('prices'), message: 'a plan needs a month or a year price (or "free": true)' });
      }
      if (plan.credits_per_month < 1) {
        context.addIssue({ code: 'custom', path: at('credits_per_month'), message: 'required: a positive number of credits per month' });
      }
    }
    const cadences = new Set<string>();
    plan.recurring_grants.forEach((grant, grantIndex) => {
      if (cadences.has(grant.every)) {
        context.addIssue({
          code: 'custom',
          path: at('recurring_grants', grantIndex, 'every'),
          message: `a second grant every ${grant.every}`,
        });
      }
      cadences.add(grant.every);
    });
    const meters = plan.entitlements?.meters;
    if (Array.isArray(meters)) {
      const seen = new Set<string>();
      meters.forEach((meter, meterIndex) => {
        const path = at('entitlements', 'meters', meterIndex);
        if (!meterIds.has(meter)) context.addIssue({ code: 'custom', path, message: `no meter ${meter} in the catalog` });
        if (seen.has(meter)) context.addIssue({ code: 'custom', path, message: `meter ${meter} is listed twice` });
        seen.add(meter);
      });
    }
  });
}

export type Catalog = z.infer<typeof catalogSchema>;
export type Plan = z.infer<typeof planSchema>;
export type CreditPack = z.infer<typeof packSchema>;

export class CatalogError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CatalogError';
  }
}

export function parseCatalog(value: unknown, source = 'catalog'): Catalog {
  const result = catalogSchema.safeParse(value);
  if (result.success) return result.data;
  const lines = result.error.issues.map((issue) => `  ${issue.path.join('.') || '(root)'}: ${issue.message}`);
  throw new CatalogError(`invalid plan catalog ${source}:\n${lines.join('\n')}`);
}

export function loadCatalog(path: string): Catalog {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new CatalogError(`TALLY_PLANS: cannot read ${path}: ${(error as Error).message}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new CatalogError(`TALLY_PLANS: ${path} is not valid JSON: ${(error as Error).message}`);
  }
  return parseCatalog(json, path);
}

/** Where a Stripe price leads: a plan with its interval, a credit pack, or nothing we sell. */
export type PriceMatch = { kind: 'plan'; plan: Plan; interval: 'month' | 'year' } | { kind: 'pack'; pack: CreditPack } | undefined;

export function findPrice(catalog: Catalog, priceId: string): PriceMatch {
  for (const plan of catalog.plans) {
    if (plan.prices.month === priceId) return { kind: 'plan', plan, interval: 'month' };
    if (plan.prices.year === priceId) return { kind: 'plan', plan, interval: 'year' };
  }
  const pack = catalog.credit_packs.find((candidate) => candidate.price === priceId);
  return pack === undefined ? undefined : { kind: 'pack', pack };
}
