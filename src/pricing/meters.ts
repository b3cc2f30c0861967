import { z } from 'zod';
import { TallyError, invalidRequest } from '../errors.js';

/**
 * Meters and rates as the catalog declares them and as an operator publishes them: the shapes,
 * and the checks that tie a rate card to the meters (every rate names a known meter and
 * dimension, and every dimension of every meter has its rate). Pure: no database, no clock.
 *
 * A rate is credits per unit as an exact decimal string. It stays a string everywhere in
 * TypeScript: cost is computed by PostgreSQL in `numeric`, never in floats (SPEC, invariant 16).
 */
export const rateDecimalPlacesMax = 12;
/** Digits before the point: a rate below 10^15 credits per unit keeps every charge in reach of numeric's exact range. */
export const rateIntegerDigitsMax = 15;
export const dimensionCountMax = 32;
export const meterCountMax = 1000;

/** `0.000125`, `2`, `0`; never `.5`, `1.`, `1e-3`, `-1`, `01` or a 13th decimal place. */
export const rateDecimalPattern = new RegExp(`^(0|[1-9][0-9]{0,${rateIntegerDigitsMax - 1}})(\\.[0-9]{1,${rateDecimalPlacesMax}})?$`);

export const meterIdSchema = z.string().regex(/^[A-Za-z0-9_.:/-]{1,64}$/, 'letters, digits, _ . : / - (1 to 64)');
export const dimensionSchema = z.string().regex(/^[A-Za-z0-9_.:-]{1,64}$/, 'letters, digits, _ . : - (1 to 64)');
export const rateCardIdSchema = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, _ . - (1 to 64)');
const rateWords = `a decimal string of credits per unit, as "0.00125", with at most ${rateDecimalPlacesMax} decimal places (no sign, exponent or leading zero)`;
// A rate as a JSON number is refused too: a float may already have lost the price's digits.
export const rateSchema = z.string({ error: rateWords }).regex(rateDecimalPattern, rateWords);

export const meterSchema = z.strictObject({
  id: meterIdSchema,
  dimensions: z
    .array(dimensionSchema)
    .min(1)
    .max(dimensionCountMax)
    .refine((dimensions) => new Set(dimensions).size === dimensions.length, 'dimensions must be distinct'),
});
export type Meter = z.infer<typeof meterSchema>;

/** Per meter, per dimension, the credits per unit. */
export const ratesSchema = z.record(z.string(), z.record(z.string(), rateSchema));
export type Rates = z.infer<typeof ratesSchema>;

export interface RateIssue {
  path: string[];
  message: string;
}

/**
 * What is wrong with a card's rates against the meters: a meter or dimension that does not
 * exist, or one that has no rate. A card prices every dimension of every meter, so that no spend
 * can find its meter unpriced (a missing rate is never read as zero).
 */
export function rateIssues(rates: Rates, meters: readonly Meter[]): RateIssue[] {
  const issues: RateIssue[] = [];
  const byId = new Map(meters.map((meter) => [meter.id, meter]));
  for (const [meterId, dimensionRates] of Object.entries(rates)) {
    const meter = byId.get(meterId);
    if (meter === undefined) {
      issues.push({ path: [meterId], message: `unknown meter ${meterId}` });
      continue;
    }
    for (const dimension of Object.keys(dimensionRates)) {
      if (!meter.dimensions.includes(dimension)) {
        issues.push({ path: [meterId, dimension], message: `unknown dimension ${dimension} of meter ${meterId}` });
      }
    }
  }
  for (const meter of meters) {
    const dimensionRates = rates[meter.id];
    if (dimensionRates === undefined) {
      issues.push({ path: [meter.id], message: `no rates for meter ${meter.id}: a card prices every meter` });
      continue;
    }
    for (const dimension of meter.dimensions) {
      if (dimensionRates[dimension] === undefined) {
        issues.push({ path: [meter.id, dimension], message: `no rate for dimension ${dimension} of meter ${meter.id}` });
      }
    }
  }
  return issues;
}

/** What a priced spend names: the meter and, per dimension, how many units (non-negative safe integers). */
export const quantitiesSchema = z
  .record(dimensionSchema, z.int().min(0).max(Number.MAX_SAFE_INTEGER))
  .refine((quantities) => Object.keys(quantities).length >= 1, 'name at least one dimension')
  .refine((quantities) => Object.keys(quantities).length <= dimensionCountMax, `at most ${dimensionCountMax} dimensions`);
export type Quantities = z.infer<typeof quantitiesSchema>;

export const unknownMeter = (meterId: string): TallyError =>
  new TallyError('unknown_meter', 400, `no meter ${meterId} in the catalog`, { meter: meterId });

/**
 * Checks a priced spend's meter and quantities against the catalog's meters: an unknown meter
 * is `unknown_meter`, a dimension the meter does not have is `invalid_request` naming it (at
 * `field`, the path of the quantities in the request).
 */
export function checkQuantities(meters: readonly Meter[], meterId: string, quantities: Quantities, field = 'quantities'): void {
  const meter = meters.find((candidate) => candidate.id === meterId);
  if (meter === undefined) throw unknownMeter(meterId);
  for (const dimension of Object.keys(quantities)) {
    if (!meter.dimensions.includes(dimension)) {
      throw invalidRequest(
        `${field}.${dimension}`,
        `meter ${meterId} has no dimension ${dimension} (it has ${meter.dimensions.join(', ')})`,
      );
    }
  }
}
