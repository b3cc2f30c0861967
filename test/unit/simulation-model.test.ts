import assert from 'node:assert/strict';
import { it } from 'node:test';
import type { Fact, PaidLine } from '../../simulation/history.js';
import { addMonths, cadencePeriod, monthsOf, runModel } from '../../simulation/model.js';
import { simulationCatalog } from '../../simulation/catalog.js';
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
  return { id, subscription: 'sub', item: 'si', price, quantity, start: from, end: to, proration, amount, billingPeriod: period };
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
    total: amountPaid,
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
  assert.equal(result.grants.find((grant) => grant.key === `period:sub:si:${months[10]!.start}`)?.amount, 16000);
  assert.equal(
    result.grants.find((grant) => grant.key === `period:sub:si:${months[11]!.start}`),
    undefined,
  );
  assert.equal(result.grants.find((grant) => grant.key === `period:sub:si:${start}`)?.amount, 20000);
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
    grants: [{ key: `period:sub:si:${start}`, amount: 4000, remaining: 0, expiresAt: end, expired: true }],
    carry: '0',
  });
});

// The model's own rules from SPEC (issue 19): each is written from SPEC's text, not from Tally.

it('the calendar adds months as Stripe counts from an anchor, clamped to shorter months', () => {
  const at = (text: string) => Date.parse(text) / 1000;
  assert.equal(addMonths(at('2030-01-31T10:20:30Z'), 1), at('2030-02-28T10:20:30Z'));
  assert.equal(addMonths(at('2032-01-31T00:00:00Z'), 1), at('2032-02-29T00:00:00Z'));
  assert.equal(addMonths(at('2100-01-29T00:00:00Z'), 1), at('2100-02-28T00:00:00Z'));
  assert.equal(addMonths(at('2030-03-31T23:59:59Z'), -1), at('2030-02-28T23:59:59Z'));
  assert.equal(addMonths(at('2030-05-15T13:45:10Z'), 12), at('2031-05-15T13:45:10Z'));
  assert.equal(addMonths(at('2030-12-31T00:00:00Z'), 2), at('2031-02-28T00:00:00Z'));
  assert.equal(addMonths(at('1999-11-30T00:00:00Z'), 3), at('2000-02-29T00:00:00Z'));
});

it('two plan items on one subscription are each granted, under keys that carry the item (gap 5)', () => {
  const result = account([
    paid(start, 'in_1', [
      line('il_1', 'price_plus_monthly', 1, start, false, 4000),
      { ...line('il_2', 'price_pro_monthly', 1, start, false, 20000), item: 'si_2' },
    ]),
  ]);
  assert.deepEqual(
    result.grants.map((grant) => [grant.key, grant.amount]),
    [
      [`period:sub:si:${start}`, 4000],
      [`period:sub:si_2:${start}`, 20000],
    ],
  );
});

it('a prorated cancellation then a full refund of the same invoice claw back no more than it granted (gap 6)', () => {
  const t = start + 15 * day;
  const result = account([
    subscribed('price_plus_monthly'),
    paid(t, 'in_2', [line('il_c', 'price_plus_monthly', 1, t, true, -2000)], 0),
    { kind: 'refund', at: t + day, refund: 're_1', paymentIntent: 'pi_in_1', amount: 1000 },
  ]);
  assert.equal(result.available + result.debt * -1, 0);
  assert.equal(result.debt, 0);
});

it('after a lost dispute took all its payment granted, a seat decrease of that period claws nothing more and the seat left is granted its share (seed 1006)', () => {
  const t = start + 10 * day;
  const result = account([
    subscribed('price_pro_monthly', 4),
    { kind: 'dispute', at: start + day, dispute: 'dp_1', paymentIntent: 'pi_in_1', amount: 1000 },
    paid(t, 'in_2', [line('il_u', 'price_pro_monthly', 4, t, true, -53334), line('il_r', 'price_pro_monthly', 1, t, true, 13333)], 0),
  ]);
  // The dispute took all 80000; the unused four seats (53334) count against the same payment,
  // which has nothing left; one seat for 20 of 30 days grants floor(20000 × 20/30) = 13333.
  assert.deepEqual({ available: result.available, debt: result.debt }, { available: 13333, debt: 0 });
});

it('an upgrade claws the old plan back against the payment that bought it, not against its own invoice, so a full refund of that payment claws only what is left (seed 1011)', () => {
  const t = start + 10 * day;
  const result = account([
    subscribed('price_plus_monthly'),
    paid(t, 'in_2', [line('il_u', 'price_plus_monthly', 1, t, true, -2667), line('il_r', 'price_pro_monthly', 1, t, true, 13333)]),
    { kind: 'refund', at: t + day, refund: 're_1', paymentIntent: 'pi_in_1', amount: 1000 },
  ]);
  // in_1 granted 4000; the upgrade took ceil(4000 × 20/30) = 2667 of it, so the refund takes 1333.
  assert.equal(result.available, 4000 - 2667 + 13333 - 1333);
  assert.equal(result.debt, 0);
});

it('a pending line of an ended subscription, paid on another subscription’s invoice after its period, grants into that invoice’s period, whose own grant is spent first (seed 963541)', () => {
  const t = start + 15 * day;
  const next = { start: end + 2 * day, end: end + 32 * day };
  const result = runModel(catalog, [
    subscribed('price_pro_monthly'),
    { kind: 'subscription_ended', at: t + day, subscription: 'sub' },
    {
      ...paid(next.start, 'in_b', [
        line('il_u', 'price_pro_monthly', 1, t, true, -10000),
        line('il_r', 'price_pro_monthly', 3, t, true, 30000),
        {
          ...line('il_b', 'price_plus_monthly', 1, next.start, false, 4000, next.end),
          subscription: 'sub_b',
          item: 'si_b',
          billingPeriod: next,
        },
      ]),
      subscription: 'sub_b',
      currentPeriod: next,
    } as Fact,
  ]).accounts.get('a')!;
  // floor(60000 × 15/30) = 30000, usable until the Plus period ends; the unused Pro seat
  // (10000) takes the Plus period grant (listed last, granted first) before it.
  assert.equal(result.grants.find((grant) => grant.key === 'proration:il_r')?.expiresAt, next.end);
  assert.equal(result.grants.find((grant) => grant.key === `period:sub_b:si_b:${next.start}`)?.remaining, 0);
});

it('a switch away from a yearly plan counts the months it takes away against the year’s payment, so a refund of that payment claws only what is left (seed 912844)', () => {
  const year = { start, end: addMonths(start, 12) };
  const t = start + 2 * day;
  const monthly = { start: t, end: addMonths(t, 1) };
  const result = account([
    paid(start, 'in_y', [{ ...line('il_y', 'price_plus_yearly', 1, start, false, 40000, year.end), billingPeriod: year }], 40000),
    {
      ...paid(t, 'in_2', [
        { ...line('il_u', 'price_plus_yearly', 1, t, true, -39780, year.end), billingPeriod: year },
        { ...line('il_s', 'price_starter_monthly', 1, t, false, 1000, monthly.end), billingPeriod: monthly },
      ]),
      currentPeriod: monthly,
    } as Fact,
    { kind: 'refund', at: t + day, refund: 're_1', paymentIntent: 'pi_in_y', amount: 13333 },
  ]);
  // Month 1 (30 days) loses ceil(4000 × 28/30) = 3734 and months 2 to 12 all of their 44000:
  // 47734 of the 48000 the year bought, so a third refunded claws 266, not 16000.
  const clawed = 3734 + 266;
  assert.deepEqual({ available: result.available, debt: result.debt }, { available: 4000 - clawed + 1000, debt: 0 });
});

it('the months a switch away from an upgraded yearly plan takes away count against the upgrade, not the year’s first payment (seed 926688)', () => {
  const year = { start, end: addMonths(start, 12) };
  const yearly = (id: string, price: string, from: number, amount: number, proration: boolean) => ({
    ...line(id, price, 1, from, proration, amount, year.end),
    billingPeriod: year,
  });
  const upgraded = start + 2 * day;
  const switched = start + 3 * day;
  const monthly = { start: switched, end: addMonths(switched, 1) };
  const result = account([
    paid(start, 'in_y', [yearly('il_y', 'price_plus_yearly', start, 40000, false)], 40000),
    paid(upgraded, 'in_u', [
      yearly('il_a', 'price_plus_yearly', upgraded, -39000, true),
      yearly('il_b', 'price_pro_yearly', upgraded, 195000, true),
    ]),
    {
      ...paid(switched, 'in_s', [
        yearly('il_c', 'price_pro_yearly', switched, -194000, true),
        { ...line('il_m', 'price_pro_monthly', 1, switched, false, 20000, monthly.end), billingPeriod: monthly },
      ]),
      currentPeriod: monthly,
    } as Fact,
    { kind: 'refund', at: switched + day, refund: 're_1', paymentIntent: 'pi_in_y', amount: 10000 },
  ]);
  // in_y keeps 48000 - ceil(4000 × 28/30) - 11 × 4000 = 266; the upgrade bought the Pro months the
  // switch takes away. Before the refund: 266 + (18666 - 18000) + 20000 = 20932; it claws 266.
  assert.equal(result.available, 20932 - 266);
});

it('a lost dispute of a charge that paid part of an invoice (the customer balance paid the rest) claws what that money bought (seed 926682)', () => {
  const facts: Fact[] = [
    { ...paid(start, 'in_1', [line('il_1', 'price_plus_monthly', 1, start, false, 1000)], 400), total: 1000 } as Fact,
    { kind: 'dispute', at: start + day, dispute: 'dp_1', paymentIntent: 'pi_in_1', amount: 400 },
  ];
  // As a refund of those 400 cents: 40 % of 4000 credits, not all of them.
  assert.equal(account(facts).available, 4000 - 1600);
});

it('after a full refund of a yearly payment, a switch to monthly in a month the refund cancelled claws nothing more (seed 487471)', () => {
  const year = { start, end: addMonths(start, 12) };
  const second = monthsOf(year)[1]!;
  const t = second.start + 4 * day;
  const monthly = { start: t, end: addMonths(t, 1) };
  const result = account([
    paid(start, 'in_y', [{ ...line('il_y', 'price_pro_yearly', 1, start, false, 200000, year.end), billingPeriod: year }], 200000),
    { kind: 'refund', at: start + 10 * day, refund: 're_1', paymentIntent: 'pi_in_y', amount: 200000 },
    { kind: 'clock', at: second.start },
    {
      ...paid(t, 'in_s', [
        { ...line('il_u', 'price_pro_yearly', 1, t, true, -180000, year.end), billingPeriod: year },
        { ...line('il_s', 'price_starter_monthly', 1, t, false, 1000, monthly.end), billingPeriod: monthly },
      ]),
      currentPeriod: monthly,
    } as Fact,
  ]);
  // The refund took all 240000 (months 2 to 12 cancelled, month 1 clawed): nothing is left to claw.
  assert.deepEqual({ available: result.available, debt: result.debt }, { available: 1000, debt: 0 });
});

it('a refund is proportional to the invoice total before the customer balance paid part of it (gap 7)', () => {
  const facts: Fact[] = [
    { ...paid(start, 'in_1', [line('il_1', 'price_plus_monthly', 1, start, false, 1000)], 400), total: 1000 } as Fact,
    { kind: 'refund', at: start + day, refund: 're_1', paymentIntent: 'pi_in_1', amount: 400 },
  ];
  // 400 of a 1000-cent invoice: 40 % of 4000 credits, not 100 %.
  assert.equal(account(facts).available, 4000 - 1600);
});

it('a yearly subscription ending exactly at a month start never keeps that month, even when the scheduler ran first (gap 8)', () => {
  const year = { start, end: addMonths(start, 12) };
  const yearly = paid(
    start,
    'in_y',
    [{ ...line('il_y', 'price_plus_yearly', 1, start, false, 40000, year.end), billingPeriod: year }],
    40000,
  );
  const second = monthsOf(year)[1]!;
  const result = runModel(catalog, [
    yearly,
    { kind: 'clock', at: second.start },
    { kind: 'subscription_ended', at: second.start, subscription: 'sub' },
  ]);
  assert.deepEqual(
    result.accounts.get('a')!.grants.map((grant) => grant.key),
    [`period:sub:si:${start}`],
  );
  assert.ok(result.voidable.has(`period:sub:si:${second.start}`));
});

it('a line of another subscription on an invoice is booked to its own subscription (gap 9)', () => {
  const result = account([
    subscribed('price_plus_monthly'),
    paid(start + 20 * day, 'in_b', [
      { ...line('il_other', 'price_plus_monthly', 1, start + 10 * day, true, -2667), subscription: 'sub' },
      { ...line('il_b', 'price_starter_monthly', 1, start + 20 * day, false, 1000, end + 20 * day), subscription: 'sub_b', item: 'si_b' },
    ]),
  ]);
  assert.ok(result.grants.some((grant) => grant.key === `period:sub_b:si_b:${start + 20 * day}`));
  // ceil(4000 × 20/30) = 2667 taken from sub's own period.
  assert.equal(result.grants.find((grant) => grant.key === `period:sub:si:${start}`)?.remaining, 4000 - 2667);
});

it('spend limits refuse what would pass them, and operators’ grants and adjustments never count', () => {
  const facts: Fact[] = [
    subscribed('price_plus_monthly'),
    { kind: 'limits', at: start, account: 'a', perDay: 100, perMonth: null },
    { kind: 'usage', at: start + 10, account: 'a', amount: 60, key: 'u1' },
    { kind: 'adjustment', at: start + 20, account: 'a', key: 'adj', amount: -500 },
    { kind: 'admin_grant', at: start + 30, account: 'a', key: 'g', amount: 50, expiresAt: null, priority: 0 },
    { kind: 'usage', at: start + 40, account: 'a', amount: 50, key: 'u2' },
    { kind: 'hold', at: start + 50, account: 'a', amount: 40, key: 'h', expiresInSeconds: 60 },
    { kind: 'void', at: start + 60, hold: 'h' },
    { kind: 'usage', at: start + 70, account: 'a', amount: 40, key: 'u3' },
    { kind: 'usage', at: start + day, account: 'a', amount: 100, key: 'u4' },
  ];
  const { answers } = runModel(catalog, facts);
  assert.equal(answers.get('u1')?.status, 200);
  assert.equal(answers.get('adj')?.status, 201);
  assert.equal(answers.get('g')?.status, 201);
  assert.deepEqual([answers.get('u2')?.status, answers.get('u2')?.code], [402, 'spend_limit_exceeded']);
  assert.equal(answers.get('h')?.status, 201);
  // The void gave the hold's 40 back to the day's window.
  assert.equal(answers.get('u3')?.status, 200);
  assert.equal(answers.get('u4')?.status, 200);
});

it('auto top-up fires only on a spend, once in flight, and three failures in a row turn it off', () => {
  const facts: Fact[] = [
    subscribed('price_plus_monthly'),
    { kind: 'auto_top_up', at: start, account: 'a', enabled: true, threshold: 5000, pack: 'pack_1000', maxPerMonth: 5 },
    { kind: 'usage', at: start + 10, account: 'a', amount: 10, key: 'u1' },
    { kind: 'usage', at: start + 20, account: 'a', amount: 10, key: 'u2' },
    { kind: 'payment_intent_created', at: start + 20, account: 'a', key: 'topup:a:1', paymentIntent: 'pi_t1', amount: 1000 },
    { kind: 'payment_intent_resolved', at: start + 20, paymentIntent: 'pi_t1', outcome: 'failed' },
    { kind: 'adjustment', at: start + 30, account: 'a', key: 'adj', amount: -10 },
    { kind: 'usage', at: start + 40, account: 'a', amount: 10, key: 'u3' },
    { kind: 'payment_intent_created', at: start + 40, account: 'a', key: 'topup:a:2', paymentIntent: 'pi_t2', amount: 1000 },
    { kind: 'payment_intent_created', at: start + 2 * day, account: 'a', key: 'topup:a:2', paymentIntent: 'pi_t2b', amount: 1000 },
    { kind: 'payment_intent_resolved', at: start + 2 * day, paymentIntent: 'pi_t2', outcome: 'succeeded' },
  ];
  const result = runModel(catalog, facts);
  assert.equal(result.accounts.get('a')!.grants.find((grant) => grant.key === 'purchase:pi_t2')?.amount, 1000);
  assert.equal(result.violations.length, 1);
  assert.match(result.violations[0]!, /second PaymentIntent pi_t2b .* topup:a:2/);
  assert.deepEqual(
    result.events
      .get('a')!
      .filter((event) => event.type.startsWith('topup.'))
      .map((event) => [event.type, event.subject]),
    [
      ['topup.failed', 'pi_t1'],
      ['topup.succeeded', 'pi_t2'],
    ],
  );
  const unasked = runModel(catalog, [
    subscribed('price_plus_monthly'),
    { kind: 'auto_top_up', at: start, account: 'a', enabled: true, threshold: 5000, pack: 'pack_1000', maxPerMonth: 5 },
    { kind: 'payment_intent_created', at: start, account: 'a', key: 'topup:a:1', paymentIntent: 'pi_t1', amount: 1000 },
  ]);
  assert.match(unasked.violations[0]!, /no qualifying spend fired/);
});

/** A priced spend of gpt-5-mini input tokens (standard card: 0.000025 a token) on an account without a subscription. */
const mini = (tokens: number) => ({ meter: 'openai/gpt-5-mini', quantities: { input_tokens: tokens }, subscription: null });
const pack = (at: number): Fact => ({
  kind: 'pack_paid',
  at,
  account: 'a',
  paymentIntent: 'pi_pack',
  amountPaid: 1000,
  items: [{ price: 'price_pack_1000', quantity: 1 }],
});

it('priced spends charge the floor of cost plus carry and keep the rest, and a refused one changes neither balance nor carry', () => {
  const facts: Fact[] = [
    // At a zero balance: 16,000 tokens cost 0.4 credits, twice charged 0 (carry 0.4, then 0.8).
    { kind: 'usage', at: start + 1, account: 'a', amount: 0, key: 'u1', priced: mini(16_000) },
    { kind: 'usage', at: start + 2, account: 'a', amount: 0, key: 'u2', priced: mini(16_000) },
    // 0.8 + 1.2 would charge 2: refused, the carry kept; then 0.8 + 0.1 charges 0.
    { kind: 'usage', at: start + 3, account: 'a', amount: 0, key: 'u3', priced: mini(48_000) },
    { kind: 'usage', at: start + 4, account: 'a', amount: 0, key: 'u4', priced: mini(4_000) },
    pack(start + 5),
    { kind: 'usage', at: start + 6, account: 'a', amount: 0, key: 'u5', priced: mini(16_000) },
  ];
  const result = runModel(catalog, facts);
  const summary = (key: string) => {
    const answer = result.answers.get(key)!;
    return [answer.status, answer.amount, answer.cost, answer.code];
  };
  assert.deepEqual(summary('u1'), [200, 0, '0.4', undefined]);
  assert.deepEqual(summary('u2'), [200, 0, '0.4', undefined]);
  assert.deepEqual(summary('u3'), [402, undefined, undefined, 'insufficient_credits']);
  assert.deepEqual(summary('u4'), [200, 0, '0.1', undefined]);
  // 0.9 + 0.4 = 1.3: one credit of the pack, 0.3 left.
  assert.deepEqual(summary('u5'), [200, 1, '0.4', undefined]);
  assert.equal(result.accounts.get('a')!.available, 999);
  assert.equal(result.accounts.get('a')!.carry, '0.3');
});

it('a priced hold reserves ceil(cost) and its capture is priced by the hold’s version, after a price change, with the carry', () => {
  const rates = structuredClone(catalog.rate_cards.find((card) => card.id === 'standard')!.rates);
  rates['openai/gpt-5-mini']!.input_tokens = '0.000000000001';
  const facts: Fact[] = [
    pack(start),
    // 50,000 tokens at 0.000025: 1.25, so 2 held.
    { kind: 'hold', at: start + 1, account: 'a', amount: 0, key: 'h', expiresInSeconds: 3600, priced: mini(50_000) },
    { kind: 'rate_card', at: start + 2, key: 'r2', card: 'standard', rates, effectiveAt: start + 2 },
    // Version 3, scheduled for the next day, is not in effect before it.
    { kind: 'rate_card', at: start + 3, key: 'r3', card: 'standard', rates: catalog.rate_cards[0]!.rates, effectiveAt: start + day },
    { kind: 'quote', at: start + 4, account: 'a', key: 'q', amount: 0, priced: mini(1_000_000) },
    // 100,000 tokens by the hold's version cost 2.5: 2 + carry would be 2, fine; 120,000 (3) is over the hold.
    { kind: 'capture', at: start + 5, hold: 'h', amount: 0, quantities: { input_tokens: 120_000 } },
    { kind: 'capture', at: start + 6, hold: 'h', amount: 0, quantities: { input_tokens: 70_000 } },
    // Version 2 prices a spend now: 1,000,000 tokens cost 0.000001.
    { kind: 'usage', at: start + 7, account: 'a', amount: 0, key: 'u', priced: mini(1_000_000) },
    { kind: 'usage', at: start + day, account: 'a', amount: 0, key: 'u2', priced: mini(1_000_000) },
  ];
  const result = runModel(catalog, facts);
  assert.deepEqual(
    ['h', 'r2', 'r3', 'q', 'capture:h', 'u', 'u2'].map((key) => {
      const { status, amount, cost, version, code, allowed } = result.answers.get(key)!;
      return [key, status, amount, cost, version, code, allowed];
    }),
    [
      ['h', 201, 2, '1.25', 1, undefined, undefined],
      ['r2', 200, undefined, undefined, 2, undefined, undefined],
      ['r3', 200, undefined, undefined, 3, undefined, undefined],
      ['q', 200, 0, '0.000001', 2, undefined, true],
      // The first capture (3 credits) was refused and left the hold as it was: the second is the answer kept.
      ['capture:h', 200, 1, '1.75', 1, undefined, undefined],
      ['u', 200, 0, '0.000001', 2, undefined, undefined],
      // Version 3 (the catalog's rates again) is in effect from the next day: 25 credits.
      ['u2', 200, 25, '25', 3, undefined, undefined],
    ],
  );
  assert.equal(result.accounts.get('a')!.available, 1000 - 1 - 25);
  assert.equal(result.accounts.get('a')!.carry, '0.750001');
});

it('a priced spend on a meter outside the plan is 403 meter_not_entitled, and a plan change flips it', () => {
  const sims = simulationCatalog();
  const gpt5 = (status: string, prices: string[]) => ({
    meter: 'openai/gpt-5',
    quantities: { output_tokens: 1000 },
    subscription: { prices, quantities: prices.map(() => 1), status },
  });
  const facts: Fact[] = [
    pack(start),
    // Starter lacks gpt-5; Pro has it (on its own card, volume: 0.0008 a token); a canceled
    // subscription leaves the free plan, which lacks it; two items take the union.
    { kind: 'usage', at: start + 1, account: 'a', amount: 0, key: 'starter', priced: gpt5('active', ['price_starter_monthly']) },
    { kind: 'quote', at: start + 2, account: 'a', key: 'quote', amount: 0, priced: gpt5('active', ['price_starter_monthly']) },
    { kind: 'usage', at: start + 3, account: 'a', amount: 0, key: 'pro', priced: gpt5('past_due', ['price_pro_monthly']) },
    { kind: 'usage', at: start + 4, account: 'a', amount: 0, key: 'ended', priced: gpt5('canceled', ['price_pro_monthly']) },
    {
      kind: 'usage',
      at: start + 5,
      account: 'a',
      amount: 0,
      key: 'two',
      priced: gpt5('active', ['price_starter_monthly', 'price_pro_monthly']),
    },
  ];
  const { answers, accounts } = runModel(sims, facts);
  const summary = (key: string) => {
    const { status, code, plan, amount, allowed } = answers.get(key)!;
    return [key, status, code, plan, amount, allowed];
  };
  assert.deepEqual(['starter', 'quote', 'pro', 'ended', 'two'].map(summary), [
    ['starter', 403, 'meter_not_entitled', 'starter', undefined, undefined],
    ['quote', 200, 'meter_not_entitled', undefined, 1, false],
    ['pro', 200, undefined, undefined, 0, undefined],
    ['ended', 403, 'meter_not_entitled', 'free', undefined, undefined],
    ['two', 200, undefined, undefined, 1, undefined],
  ]);
  // 0.8 + 0.8 on the volume card: 1 credit, 0.6 left. The quote counted Starter's weekly 100 as
  // if given; Pro's monthly 1,000 was given by the first Pro spend (the refused ones gave nothing),
  // Starter's weekly 100 by the spend on both plans' items.
  assert.equal(answers.get('quote')!.available, 1100);
  assert.equal(accounts.get('a')!.carry, '0.6');
  assert.equal(accounts.get('a')!.available, 1000 + 1000 + 100 - 1);
  assert.deepEqual(
    accounts.get('a')!.grants.map((grant) => grant.key),
    ['purchase:pi_pack', 'recurring:a:pro:month:2030-04-01', 'recurring:a:starter:week:2030-04-01'],
  );
});

it('recurring grants come with the first spend, hold or balance read of their period, and idle days get nothing', () => {
  const sims = simulationCatalog();
  const free = null;
  const plus = { prices: ['price_plus_yearly'], quantities: [1], status: 'active' };
  const at = (days: number, hours: number) => start + days * day + hours * 3600;
  const facts: Fact[] = [
    { kind: 'usage', at: at(0, 3), account: 'a', amount: 30, key: 'u1', subscription: free },
    { kind: 'usage', at: at(0, 4), account: 'a', amount: 30, key: 'u2', subscription: free },
    // Day 1 passes without a call; on day 2 a quote counts the day's 50 without writing it.
    { kind: 'quote', at: at(2, 1), account: 'a', key: 'q', amount: 40, subscription: free },
    { kind: 'balance_read', at: at(2, 2), account: 'a', subscription: free },
    // On Plus (yearly) the same day gives Plus's own 20 besides the free plan's 50.
    { kind: 'hold', at: at(2, 5), account: 'a', amount: 60, key: 'h', expiresInSeconds: 60, subscription: plus },
  ];
  const { answers, accounts } = runModel(sims, facts);
  assert.deepEqual(
    ['u1', 'u2', 'q', 'h'].map((key) => [key, answers.get(key)!.status, answers.get(key)!.available]),
    [
      ['u1', 200, 20],
      ['u2', 402, 20],
      ['q', 200, 50],
      ['h', 201, 10],
    ],
  );
  const grants = accounts.get('a')!.grants;
  assert.deepEqual(
    grants.map((grant) => [grant.key, grant.amount, grant.expiresAt, grant.expired]),
    [
      ['recurring:a:free:day:2030-04-01', 50, start + day, true],
      ['recurring:a:free:day:2030-04-03', 50, start + 3 * day, false],
      ['recurring:a:plus:day:2030-04-03', 20, start + 3 * day, false],
    ],
  );
});

it('the recurring cadences are the UTC day, the ISO week from Monday and the calendar month', () => {
  const seconds = (text: string) => Date.parse(text) / 1000;
  const period = (every: 'day' | 'week' | 'month', text: string) => {
    const { start: from, end: to } = cadencePeriod(every, seconds(text));
    return [new Date(from * 1000).toISOString(), new Date(to * 1000).toISOString()];
  };
  assert.deepEqual(period('day', '2030-02-28T23:59:59Z'), ['2030-02-28T00:00:00.000Z', '2030-03-01T00:00:00.000Z']);
  // 2026-12-02 is a Wednesday; 2027-01-03 a Sunday, whose ISO week began in 2026.
  assert.deepEqual(period('week', '2026-12-02T12:00:00Z'), ['2026-11-30T00:00:00.000Z', '2026-12-07T00:00:00.000Z']);
  assert.deepEqual(period('week', '2027-01-03T23:00:00Z'), ['2026-12-28T00:00:00.000Z', '2027-01-04T00:00:00.000Z']);
  assert.deepEqual(period('month', '2032-02-29T10:00:00Z'), ['2032-02-01T00:00:00.000Z', '2032-03-01T00:00:00.000Z']);
});
