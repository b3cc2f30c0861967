/**
 * The credit rule, as pure arithmetic: credits follow money, per credit period, by billed time.
 *
 * A credit period is a monthly billing period, or one month slice of a yearly billing period.
 * Each plan line of a paid invoice moves, for every credit period it overlaps,
 * `credits_per_month × quantity × overlap seconds / seconds of the period` credits: a line that
 * bills (a period line, or a positive proration) grants that amount rounded down; a line that
 * credits the customer (a negative proration, "unused time on ...") claws it back rounded up.
 * Rounding is per line and per credit period, so nobody gets a credit that was not paid for.
 */
export interface Period {
  start: number;
  end: number;
}

export type Direction = 'grant' | 'clawback';

/** One line's effect on one credit period: how many credits, which way. */
export interface Contribution {
  period: Period;
  credits: number;
  direction: Direction;
}

/**
 * The natural key of a subscription item's period grant (SPEC): `period:{subscription}:{item}:{start}`.
 * Months scheduled before items were recorded (0020) name no item and keep the old key.
 */
export function periodKey(subscriptionId: string, subscriptionItem: string | undefined, start: number): string {
  return subscriptionItem === undefined ? `period:${subscriptionId}:${start}` : `period:${subscriptionId}:${subscriptionItem}:${start}`;
}

/** Adds months in UTC, clamping to the end of a shorter month (Jan 31 + 1 month = Feb 28/29). */
export function addMonths(unixSeconds: number, months: number): number {
  const date = new Date(unixSeconds * 1000);
  const target = new Date(
    Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + months, 1, date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()),
  );
  const lastDay = new Date(Date.UTC(target.getUTCFullYear(), target.getUTCMonth() + 1, 0)).getUTCDate();
  target.setUTCDate(Math.min(date.getUTCDate(), lastDay));
  return Math.floor(target.getTime() / 1000);
}

/** The month slices of a yearly period, counted from its start as Stripe counts from its anchor; the last ends with the period. */
export function monthsOf(period: Period): Period[] {
  const months: Period[] = [];
  for (let index = 0; index < 12; index += 1) {
    const start = addMonths(period.start, index);
    if (start >= period.end) break;
    months.push({ start, end: Math.min(addMonths(period.start, index + 1), period.end) });
  }
  return months;
}

/** The credit periods of one billing period. */
export function creditPeriodsOf(interval: 'month' | 'year', billingPeriod: Period): Period[] {
  return interval === 'month' ? [billingPeriod] : monthsOf(billingPeriod);
}

/** The billing period that ends at `end`, counted back one interval (for a period Tally never saw paid). */
export function billingPeriodEndingAt(interval: 'month' | 'year', end: number): Period {
  return { start: addMonths(end, interval === 'month' ? -1 : -12), end };
}

/**
 * `credits × quantity × overlap / length`, rounded down for a grant and up for a clawback, in
 * exact integer arithmetic (BigInt: the product can pass 2^53 before the division).
 */
export function proratedCredits(
  creditsPerMonth: number,
  quantity: number,
  overlapSeconds: number,
  periodSeconds: number,
  direction: Direction,
): number {
  if (overlapSeconds <= 0 || periodSeconds <= 0 || quantity <= 0) return 0;
  const numerator = BigInt(creditsPerMonth) * BigInt(quantity) * BigInt(Math.min(overlapSeconds, periodSeconds));
  const denominator = BigInt(periodSeconds);
  const quotient = numerator / denominator;
  const rounded = direction === 'clawback' && quotient * denominator !== numerator ? quotient + 1n : quotient;
  const credits = Number(rounded);
  if (!Number.isSafeInteger(credits)) throw new Error(`prorated credits ${rounded} are beyond the safe range`);
  return credits;
}

/**
 * What one line moves in each credit period of its billing period that it overlaps. `billed`
 * is the time the line bills ([start, end] of the line); `billingPeriod` the whole period
 * it belongs to.
 */
export function lineContributions(
  line: { creditsPerMonth: number; quantity: number; billed: Period; direction: Direction },
  interval: 'month' | 'year',
  billingPeriod: Period,
): Contribution[] {
  return creditPeriodsOf(interval, billingPeriod).flatMap((period) => {
    const overlap = Math.min(period.end, line.billed.end) - Math.max(period.start, line.billed.start);
    const credits = proratedCredits(line.creditsPerMonth, line.quantity, overlap, period.end - period.start, line.direction);
    return credits > 0 ? [{ period, credits, direction: line.direction }] : [];
  });
}
