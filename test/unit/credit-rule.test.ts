import assert from 'node:assert/strict';
import { it } from 'node:test';
import fc from 'fast-check';
import {
  addMonths,
  billingPeriodEndingAt,
  creditPeriodsOf,
  lineContributions,
  monthsOf,
  periodKey,
  proratedCredits,
} from '../../src/billing/credit-rule.js';
import { proportionalCredits } from '../../src/billing/payments.js';
import * as model from '../../simulation/model.js';

// The credit rule's arithmetic (src/billing/credit-rule.ts) against oracles that share nothing
// with it: the simulator's calendar (written from its definition) and exact rational arithmetic
// written here from SPEC's sentence "grants round down, clawbacks round up, per line and per
// credit period". These run in milliseconds, so the mutation run can use them for every mutant.

const day = 86400;
// Instants from 1970 to 2100, at any second of the day, and the month-end days that clamp.
const instant = fc.integer({ min: 0, max: Date.parse('2100-01-01T00:00:00Z') / 1000 });
const monthEnd = fc
  .record({
    year: fc.integer({ min: 1971, max: 2099 }),
    month: fc.integer({ min: 0, max: 11 }),
    second: fc.integer({ min: 0, max: day - 1 }),
  })
  .map(({ year, month, second }) => Date.UTC(year, month + 1, 0) / 1000 + second);
const anyInstant = fc.oneof(instant, monthEnd);

/** floor or ceiling of a/b for non-negative BigInts, as SPEC rounds grants and clawbacks. */
function exactShare(numerator: bigint, denominator: bigint, up: boolean): number {
  const quotient = numerator / denominator;
  return Number(up && quotient * denominator !== numerator ? quotient + 1n : quotient);
}

it('adds months as the simulator calendar does, at every instant and month end, forwards and back', () => {
  fc.assert(
    fc.property(anyInstant, fc.integer({ min: -36, max: 36 }), (at, months) => {
      assert.equal(addMonths(at, months), model.addMonths(at, months));
    }),
    { numRuns: 2000 },
  );
});

it('clamps Jan 31 to the last day of February, keeping the time of day, in leap and common years', () => {
  const jan31 = Date.parse('2028-01-31T13:14:15Z') / 1000;
  assert.equal(addMonths(jan31, 1), Date.parse('2028-02-29T13:14:15Z') / 1000);
  assert.equal(addMonths(jan31 - 365 * day, 1), Date.parse('2027-02-28T13:14:15Z') / 1000);
  assert.equal(addMonths(jan31, 2), Date.parse('2028-03-31T13:14:15Z') / 1000);
  assert.equal(addMonths(jan31, -2), Date.parse('2027-11-30T13:14:15Z') / 1000);
  assert.equal(addMonths(jan31, 0), jan31);
});

it('slices a yearly period into the months the simulator calendar gives, the last ending with the period', () => {
  fc.assert(
    fc.property(anyInstant, fc.integer({ min: 1, max: 400 * day }), (start, length) => {
      const period = { start, end: start + length };
      assert.deepEqual(monthsOf(period), model.monthsOf(period));
      const full = { start, end: addMonths(start, 12) };
      const months = monthsOf(full);
      assert.equal(months.length, 12);
      assert.equal(months[0]!.start, start);
      assert.equal(months[11]!.end, full.end);
      for (let index = 1; index < 12; index += 1) assert.equal(months[index]!.start, months[index - 1]!.end);
    }),
    { numRuns: 1000 },
  );
});

it('never counts a month that starts at or after the period end', () => {
  const start = Date.parse('2030-01-15T00:00:00Z') / 1000;
  const twoMonths = { start, end: addMonths(start, 2) };
  assert.deepEqual(monthsOf(twoMonths), [
    { start, end: addMonths(start, 1) },
    { start: addMonths(start, 1), end: addMonths(start, 2) },
  ]);
  assert.deepEqual(monthsOf({ start, end: start + 1 }), [{ start, end: start + 1 }]);
});

it('gives a monthly period as its own credit period and a yearly one as its months', () => {
  const start = Date.parse('2030-03-31T00:00:00Z') / 1000;
  const monthly = { start, end: addMonths(start, 1) };
  assert.deepEqual(creditPeriodsOf('month', monthly), [monthly]);
  const yearly = { start, end: addMonths(start, 12) };
  assert.deepEqual(creditPeriodsOf('year', yearly), monthsOf(yearly));
  // Stripe anchors a monthly period on the 31st: Feb 28 to Mar 31 is one credit period, longer
  // than a month counted from Feb 28, and a line over all of it grants the month's credits once.
  const anchored = { start: Date.parse('2031-02-28T00:00:00Z') / 1000, end: Date.parse('2031-03-31T00:00:00Z') / 1000 };
  assert.deepEqual(creditPeriodsOf('month', anchored), [anchored]);
  assert.deepEqual(lineContributions({ creditsPerMonth: 4000, quantity: 1, billed: anchored, direction: 'grant' }, 'month', anchored), [
    { period: anchored, credits: 4000, direction: 'grant' },
  ]);
});

it('counts a billing period back one interval from its end', () => {
  const end = Date.parse('2031-03-31T08:00:00Z') / 1000;
  assert.deepEqual(billingPeriodEndingAt('month', end), { start: Date.parse('2031-02-28T08:00:00Z') / 1000, end });
  assert.deepEqual(billingPeriodEndingAt('year', end), { start: Date.parse('2030-03-31T08:00:00Z') / 1000, end });
});

it('prorates exactly: floor for a grant, ceiling for a clawback, the overlap capped at the period, nothing for empty input', () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 10_000_000 }),
      fc.integer({ min: -2, max: 500 }),
      fc.integer({ min: -day, max: 400 * day }),
      fc.integer({ min: -1, max: 370 * day }),
      fc.constantFrom<'grant' | 'clawback'>('grant', 'clawback'),
      (credits, quantity, overlap, length, direction) => {
        const got = proratedCredits(credits, quantity, overlap, length, direction);
        if (overlap <= 0 || length <= 0 || quantity <= 0) return assert.equal(got, 0);
        const expected = exactShare(
          BigInt(credits) * BigInt(quantity) * BigInt(Math.min(overlap, length)),
          BigInt(length),
          direction === 'clawback',
        );
        assert.equal(got, expected);
        assert.ok(got <= credits * quantity);
      },
    ),
    { numRuns: 3000 },
  );
});

it('rounds a third of a credit down when granting and up when clawing back, and is exact on whole shares', () => {
  assert.equal(proratedCredits(1, 1, 1, 3, 'grant'), 0);
  assert.equal(proratedCredits(1, 1, 1, 3, 'clawback'), 1);
  assert.equal(proratedCredits(3000, 2, 10, 30, 'grant'), 2000);
  assert.equal(proratedCredits(3000, 2, 10, 30, 'clawback'), 2000);
  assert.equal(proratedCredits(3000, 1, 45, 30, 'grant'), 3000);
});

it('computes past 2^53 before dividing and refuses an answer beyond the safe range', () => {
  // 2^53 - 1 credits over a whole period, times 1: the product of the three passes 2^53 first.
  assert.equal(proratedCredits(Number.MAX_SAFE_INTEGER, 1, 2_592_000, 2_592_000, 'grant'), Number.MAX_SAFE_INTEGER);
  assert.equal(proratedCredits(Number.MAX_SAFE_INTEGER, 3, 1_000_000, 3_000_000, 'grant'), Number.MAX_SAFE_INTEGER);
  assert.throws(() => proratedCredits(Number.MAX_SAFE_INTEGER, 2, 10, 10, 'grant'), /beyond the safe range/);
});

it('moves a line into each credit period it overlaps, each share computed and rounded on its own', () => {
  fc.assert(
    fc.property(
      anyInstant,
      fc.constantFrom<'month' | 'year'>('month', 'year'),
      fc.integer({ min: 0, max: 100_000 }),
      fc.integer({ min: 1, max: 20 }),
      fc.double({ min: -0.1, max: 1.1, noNaN: true }),
      fc.double({ min: -0.1, max: 1.1, noNaN: true }),
      fc.constantFrom<'grant' | 'clawback'>('grant', 'clawback'),
      (start, interval, creditsPerMonth, quantity, from, to, direction) => {
        const billingPeriod = { start, end: addMonths(start, interval === 'month' ? 1 : 12) };
        const length = billingPeriod.end - billingPeriod.start;
        const billed = {
          start: billingPeriod.start + Math.floor(Math.min(from, to) * length),
          end: billingPeriod.start + Math.floor(Math.max(from, to) * length),
        };
        const got = lineContributions({ creditsPerMonth, quantity, billed, direction }, interval, billingPeriod);
        const periods = interval === 'month' ? [billingPeriod] : model.monthsOf(billingPeriod);
        const want = periods.flatMap((period) => {
          const overlap = Math.min(period.end, billed.end) - Math.max(period.start, billed.start);
          if (overlap <= 0) return [];
          const size = period.end - period.start;
          const credits = exactShare(
            BigInt(creditsPerMonth) * BigInt(quantity) * BigInt(Math.min(overlap, size)),
            BigInt(size),
            direction === 'clawback',
          );
          return credits > 0 ? [{ period, credits, direction }] : [];
        });
        assert.deepEqual(got, want);
      },
    ),
    { numRuns: 500 },
  );
});

it('a full yearly line grants every month its whole credits; a line of one month touches only that month', () => {
  const start = Date.parse('2030-01-31T00:00:00Z') / 1000;
  const year = { start, end: addMonths(start, 12) };
  const whole = lineContributions({ creditsPerMonth: 4000, quantity: 2, billed: year, direction: 'grant' }, 'year', year);
  assert.equal(whole.length, 12);
  assert.ok(whole.every((contribution) => contribution.credits === 8000 && contribution.direction === 'grant'));
  const second = monthsOf(year)[1]!;
  const one = lineContributions({ creditsPerMonth: 4000, quantity: 1, billed: second, direction: 'clawback' }, 'year', year);
  assert.deepEqual(one, [{ period: second, credits: 4000, direction: 'clawback' }]);
});

it('keys a period grant by subscription, item and start, and by subscription and start for months before items', () => {
  assert.equal(periodKey('sub_1', 'si_1', 1700000000), 'period:sub_1:si_1:1700000000');
  assert.equal(periodKey('sub_1', undefined, 1700000000), 'period:sub_1:1700000000');
});

it("takes a refund's share of a payment's credits by the invoice's total, rounded down, and nothing for nothing", () => {
  const payment = (credits: number, total: number | null, amountPaid: number) => ({
    id: 1,
    account_id: 'a',
    amount_paid: amountPaid,
    total,
    credits,
    clawed_back: 0,
    prorated_back: 0,
  });
  // SPEC: the proportion is of the invoice's total, before the customer's Stripe balance.
  assert.equal(proportionalCredits(payment(4000, 1000, 400), 400), 1600);
  assert.equal(proportionalCredits(payment(4000, null, 400), 400), 4000, 'recorded before totals: amount_paid stands in');
  assert.equal(proportionalCredits(payment(4000, 3000, 3000), 1000), 1333);
  assert.equal(proportionalCredits(payment(4000, 1000, 1000), 5000), 4000, 'never more than the payment granted');
  assert.equal(proportionalCredits(payment(4000, 1000, 1000), 0), 0);
  assert.equal(proportionalCredits(payment(4000, 1000, 1000), -10), 0, 'a negative amount takes nothing back');
  // A payment of nothing (a 100 % coupon) has no share to take, and must not divide by zero.
  assert.equal(proportionalCredits(payment(4000, 0, 0), 100), 0);
  assert.equal(proportionalCredits(payment(4000, -500, 0), 100), 0);
  fc.assert(
    fc.property(
      fc.integer({ min: 0, max: 10_000_000 }),
      fc.integer({ min: 1, max: 1_000_000 }),
      fc.integer({ min: 1, max: 2_000_000 }),
      (credits, total, amount) => {
        const got = proportionalCredits(payment(credits, total, total), amount);
        assert.equal(got, exactShare(BigInt(credits) * BigInt(Math.min(amount, total)), BigInt(total), false));
      },
    ),
  );
});
