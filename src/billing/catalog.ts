import { readFileSync } from 'node:fs';
import { z } from 'zod';

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
});

const packSchema = z.strictObject({
  id: z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (1 to 64)'),
  price: priceIdSchema,
  credits: creditsSchema,
});

const catalogSchema = z
  .strictObject({
    plans: z.array(planSchema),
    credit_packs: z.array(packSchema).default([]),
    // Operators' grants and adjustments are bounded, so that a slip of the keyboard cannot
    // grant more credits than a balance can hold (balances stay safe integers).
    limits: z
      .strictObject({
        admin_adjustment_credits_max: creditsSchema.default(100_000),
        admin_grant_credits_max: creditsSchema.default(1_000_000),
      })
      .default({ admin_adjustment_credits_max: 100_000, admin_grant_credits_max: 1_000_000 }),
  })
  .superRefine((catalog, context) => {
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
      if (seenIds.has(pack.id))
        context.addIssue({ code: 'custom', path: ['credit_packs', index, 'id'], message: `duplicate id ${pack.id}` });
      seenIds.add(pack.id);
      claimPrice(pack.price, `pack ${pack.id}`, ['credit_packs', index, 'price']);
    });
  });

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
