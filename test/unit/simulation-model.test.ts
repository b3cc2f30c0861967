import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Fact, PaidLine } from '../../simulation/history.js';
import { addMonths, monthsOf, runModel } from '../../simulation/model.js';
import { testCatalog } from '../helpers/app.js';

// Proves that the simulator's reference model computes SPEC's credit rule on worked examples
// (an upgrade, a downgrade, a seat change, a yearly refund, rollover, an expired grant that a
// release or a restore cannot refill), so that a disagreement in the simulation points at Tally.
const day = 86400;
const start = Date.parse('2030-04-01T00:00:00Z') / 1000;
const end = start + 30 * day; // April: a 30-day period
const period = { start, end };
const catalog = testCatalog();

function line(id: string, price: string, quantity: number, from: number, proration: boolean, amount: number, to = end): PaidLine {
  return { id, price, quantity, start: from, end: to, proration, amount, billingPeriod: period };
}
function paid(at: number, invoice: string, lines: PaidLine[], amountPaid = 1000): Fact {
  return {
    kind: 'invoice_paid',
    at,
    account: 'a',
    subscription: 'sub',
    invoice,
    paymentIntent: `pi_${invoice}`,
    amountPaid,
    lines,
    currentPeriod: period,
  };
}
const subscribed = (price: string, quantity = 1): Fact => paid(start, 'in_1', [line('il_1', price, quantity, start, false, 4000)]);
const account = (facts: Fact[]) => runModel(catalog, facts).accounts.get('a')!;

it('an upgrade on day 29 of 30 grants 1/30 of the new plan and claws back 1/30 of the old, rounding for the customer never', () => {
  const t = start + 29 * day;
  const result = account([
    subscribed('price_plus_monthly'),
    paid(t, 'in_2', [line('il_u', 'price_plus_monthly', 1, t, true, -133), line('il_r', 'price_pro_monthly', 1, t, true, 667)]),
  ]);
  // floor(20000 / 30) = 666 granted, ceil(4000 / 30) = 134 clawed back.
  assert.equal(result.grants.find((grant) => grant.key === 'proration:il_r')?.amount, 666);
  assert.equal(result.available, 4000 - 134 + 666);
});

it('a downgrade at mid-period claws back the unused half of the higher plan', () => {
  const t = start + 15 * day;
  const result = account([
    subscribed('price_pro_monthly'),
    paid(t, 'in_2', [line('il_u', 'price_pro_monthly', 1, t, true, -10000), line('il_r', 'price_plus_monthly', 1, t, true, 2000)], 0),
  ]);
  assert.equal(result.available, 20000 - 10000 + 2000);
});

it('a seat added on day 10 grants its share of the rest of the period', () => {
  const t = start + 10 * day;
  const result = account([
    subscribed('price_plus_monthly'),
    paid(t, 'in_2', [line('il_u', 'price_plus_monthly', 1, t, true, -2667), line('il_r', 'price_plus_monthly', 3, t, true, 8000)]),
  ]);
  // ceil(4000 × 20/30) = 2667 back, floor(12000 × 20/30) = 8000 granted.
  assert.equal(result.available, 4000 - 2667 + 8000);
});

it('a yearly refund is proportional to the twelve months bought, cancelling the months not yet granted first, from the last', () => {
  const year = { start, end: addMonths(start, 12) };
  const yearly = paid(
    start,
    'in_y',
    [{ ...line('il_y', 'price_pro_yearly', 1, start, false, 200000, year.end), billingPeriod: year }],
    200000,
  );
  const months = monthsOf(year);
  const facts: Fact[] = [yearly, { kind: 'refund', at: start + 5 * day, refund: 're_1', paymentIntent: 'pi_in_y', amount: 20000 }];
  for (const month of months.slice(1)) facts.push({ kind: 'clock', at: month.start });
  const result = account(facts);
  // 10 % of 240000 = 24000: month 12 (20000) and 4000 of month 11 are cancelled; month 1 keeps its 20000.
  assert.equal(result.grants.find((grant) => grant.key === `period:sub:${months[10]!.start}`)?.amount, 16000);
  assert.equal(
    result.grants.find((grant) => grant.key === `period:sub:${months[11]!.start}`),
    undefined,
  );
  assert.equal(result.grants.find((grant) => grant.key === `period:sub:${start}`)?.amount, 20000);
  assert.equal(result.debt, 0);
});

it('a renewal rolls the unused credits of the period before it over, up to the plan maximum', () => {
  const next = { start: end, end: end + 31 * day };
  const renewal = paid(end, 'in_2', [{ ...line('il_2', 'price_plus_monthly', 1, end, false, 4000, next.end), billingPeriod: next }]);
  const result = account([
    subscribed('price_plus_monthly'),
    { kind: 'usage', at: start + day, account: 'a', amount: 2500, key: 'u' },
    { kind: 'clock', at: end },
    renewal,
  ]);
  assert.equal(result.grants.find((grant) => grant.key === `rollover:sub:${end}`)?.amount, 1000);
  assert.equal(result.available, 4000 + 1000);
});

it('credits released or restored to a grant that has expired expire at once', () => {
  const facts: Fact[] = [
    subscribed('price_plus_monthly'),
    { kind: 'hold', at: start + day, account: 'a', amount: 3000, key: 'h', expiresInSeconds: 86400 },
    { kind: 'refund', at: start + 2 * day, refund: 're_1', paymentIntent: 'pi_in_1', amount: 250 },
    { kind: 'clock', at: end },
    { kind: 'refund_reversed', at: end + 60, refund: 're_1' },
  ];
  const result = runModel(catalog, facts);
  // The hold expired on day 2 and gave its 3000 back; the refund took 1000; all of it expired at the end.
  assert.deepEqual(result.accounts.get('a'), {
    available: 0,
    held: 0,
    debt: 0,
    grants: [{ key: `period:sub:${start}`, amount: 4000, remaining: 0, expiresAt: end, expired: true }],
  });
});
