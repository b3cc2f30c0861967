import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { meterCountMax, meterSchema, rateCardIdSchema, rateIssues, ratesSchema } from '../pricing/meters.js';

/**
 * The plan catalog: which Stripe prices are plans and packs, and how many credits each gives.
 * Validated once at start; every error names the field, so a bad catalog stops the start with
 * a message an operator can act on.
 */
const creditsSchema = z.int().positive().max(Number.MAX_SAFE_INTEGER);
const priceIdSchema = z.string().min(1).max(255);

const planSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (1 to 64)'),
  name: z.string().min(1).max(200),
  prices: z
    .strictObject({ month: priceIdSchema.optional(), year: priceIdSchema.optional() })
    .refine((prices) => prices.month !== undefined || prices.year !== undefined, 'a plan needs a month or a year price'),
  credits_per_month: creditsSchema,
  rollover: z.strictObject({ max_credits: creditsSchema }).optional(),
  trial: z.strictObject({ days: z.int().min(1).max(730), credits: creditsSchema }).optional(),
  /** The rate card that prices this plan's usage; left out, the catalog's default_rate_card. */
  rate_card: rateCardIdSchema.optional(),
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
