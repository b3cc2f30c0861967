import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import {
  checkoutSession,
  deliver,
  dispute,
  event,
  invoice,
  month,
  refund,
  settleWebhooks,
  subscription,
  uniqueId,
} from '../helpers/stripe-events.js';

// Proves invariants 1 and 2 for Stripe: an account's whole history (subscribe, renew three
// times, upgrade, buy a pack, two partial refunds, a dispute that is won), delivered shuffled
// with 1 to 5 copies of each event while the worker runs, ends in the same ledger as one
// orderly delivery. A failure prints the seed; replay with FC_SEED=<seed> npm test -- stripe-history.
let test: TestApp;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => {
  test = await createTestApp({ poolSize: 30 });
  test.parts.startBackground();
});
after(async () => {
  await test.close();
});

interface History {
  ids: { account: string; customer: string; sub: string; pi: string; refundA: string; refundB: string; dispute: string };
  events: Record<string, unknown>[];
}

function history(): History {
  const ids = {
    account: uniqueId('acct'),
    customer: uniqueId('cus'),
    sub: uniqueId('sub'),
    pi: uniqueId('pi'),
    refundA: uniqueId('re'),
    refundB: uniqueId('re'),
    dispute: uniqueId('dp'),
  };
  let created = 1_900_000_000;
  const next = () => (created += 10);
  const period = (index: number) => ({ start: t0 + index * month, end: t0 + (index + 1) * month });
  const subscriptionState = (index: number, price: string) =>
    subscription({ id: ids.sub, customer: ids.customer, status: 'active', price, start: period(index).start, end: period(index).end });
  const events = [
    event(
      'checkout.session.completed',
      checkoutSession({ mode: 'subscription', accountId: ids.account, customer: ids.customer, subscription: ids.sub }),
      { created: next() },
    ),
    event('customer.subscription.created', subscriptionState(0, 'price_plus_monthly'), { created: next() }),
  ];
  for (let index = 0; index < 4; index += 1) {
    const paid = invoice({
      customer: ids.customer,
      subscription: ids.sub,
      billingReason: index === 0 ? 'subscription_create' : 'subscription_cycle',
      lines: [{ price: 'price_plus_monthly', ...period(index) }],
    });
    const at = next();
    events.push(event('invoice.paid', paid, { created: at }), event('invoice.payment_succeeded', paid, { created: at }));
    if (index > 0) events.push(event('customer.subscription.updated', subscriptionState(index, 'price_plus_monthly'), { created: next() }));
  }
  const within = { start: period(3).start + 5 * 86400, end: period(3).end };
  const upgrade = invoice({
    customer: ids.customer,
    subscription: ids.sub,
    billingReason: 'subscription_update',
    lines: [
      { price: 'price_plus_monthly', ...within, proration: true, amount: -3000 },
      { price: 'price_pro_monthly', ...within, proration: true, amount: 9000 },
    ],
  });
  events.push(
    event('invoice.paid', upgrade, { created: next() }),
    event('customer.subscription.updated', subscriptionState(3, 'price_pro_monthly'), { created: next() }),
  );
  events.push(
    event(
      'checkout.session.completed',
      checkoutSession({
        mode: 'payment',
        accountId: ids.account,
        customer: ids.customer,
        paymentIntent: ids.pi,
        packId: 'pack_1000',
        amountTotal: 1000,
      }),
      { created: next() },
    ),
  );
  const refundA = refund({ id: ids.refundA, amount: 200, paymentIntent: ids.pi, status: 'pending' });
  events.push(
    event('refund.created', refundA, { created: next() }),
    event('refund.updated', { ...refundA, status: 'succeeded' }, { created: next() }),
  );
  events.push(event('refund.created', refund({ id: ids.refundB, amount: 300, paymentIntent: ids.pi }), { created: next() }));
  const opened = dispute({ id: ids.dispute, amount: 500, paymentIntent: ids.pi });
  events.push(
    event('charge.dispute.created', opened, { created: next() }),
    event('charge.dispute.closed', { ...opened, status: 'won' }, { created: next() }),
  );
  return { ids, events };
}

/** The ledger of the history's account, with its ids replaced by their names. */
async function snapshot(ids: History['ids']): Promise<string> {
  const db = test.database.db;
  const grants = await db.query<{
    id: number;
    grant_key: string;
    source: string;
    amount: number;
    remaining: number;
    expires_at: Date | null;
  }>('select id, grant_key, source, amount, remaining, expires_at from grants where account_id = $1 order by grant_key', [ids.account]);
  const keyOf = new Map(grants.rows.map((grant) => [`grant_${grant.id}`, grant.grant_key]));
  const entries = await db.query<{ kind: string; amount: number; idempotency_key: string }>(
    'select kind, amount, idempotency_key from entries where account_id = $1',
    [ids.account],
  );
  const balance = await test.ledger.balance(ids.account);
  const subscriptionRow = await db.query('select status, plan_id, current_period_start from subscriptions where id = $1', [ids.sub]);
  const state = {
    balance,
    grants: grants.rows.map(({ id: _id, ...grant }) => grant),
    entries: entries.rows
      .map((entry) => ({ ...entry, idempotency_key: entry.idempotency_key.replace(/grant_\d+/, (grant) => keyOf.get(grant) ?? grant) }))
      .sort((a, b) => (a.idempotency_key < b.idempotency_key ? -1 : a.idempotency_key > b.idempotency_key ? 1 : a.amount - b.amount)),
    subscription: subscriptionRow.rows[0],
  };
  let text = JSON.stringify(state);
  for (const [name, value] of Object.entries(ids)) text = text.split(value).join(`<${name}>`);
  // Invoice lines get new ids in every history; which line is which shows in the amounts.
  text = text.replace(/il_[a-z0-9]+/g, '<line>');
  return text;
}

let orderly: string;

it('applies the orderly history as expected', async () => {
  const { ids, events } = history();
  await fundedAccount(test, ids.account, 0);
  for (const stripeEvent of events) {
    await deliver(test, stripeEvent);
    await settleWebhooks(test);
  }
  orderly = await snapshot(ids);
  const balance = await test.ledger.balance(ids.account);
  // 4 periods of 4000 (each but the last rolled into the next: 1000 kept, the rest expired),
  // the upgrade to pro on day 5 of 30 (by the credit rule: 25/30 of pro granted, rounded down,
  // and 25/30 of plus clawed back, rounded up), the pack (1000) less refunds 200 and 300, the
  // dispute won.
  assert.equal(balance.available, 4000 + 1000 + Math.floor((20000 * 25) / 30) - Math.ceil((4000 * 25) / 30) + 500);
  assert.equal(balance.debt, 0);
});

it('converges to the same ledger for shuffled deliveries of 1 to 5 copies of each event', async () => {
  const size = history().events.length;
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 1, max: 5 }), { minLength: size, maxLength: size }),
      fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { minLength: size * 5, maxLength: size * 5 }),
      async (copies, order) => {
        const { ids, events } = history();
        await fundedAccount(test, ids.account, 0);
        const deliveries = events.flatMap((stripeEvent, index) => Array.from({ length: copies[index] ?? 1 }, () => stripeEvent));
        const shuffled = deliveries.map((stripeEvent, index) => ({ stripeEvent, key: order[index] ?? 0 })).sort((a, b) => a.key - b.key);
        for (let start = 0; start < shuffled.length; start += 8) {
          const responses = await Promise.all(shuffled.slice(start, start + 8).map(({ stripeEvent }) => deliver(test, stripeEvent)));
          assert.ok(responses.every((response) => response.status === 200));
        }
        await settleWebhooks(test, 30_000);
        assert.equal(await snapshot(ids), orderly);
      },
    ),
    {
      numRuns: Number(process.env.FC_RUNS_STRIPE ?? 12),
      seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED),
      endOnFailure: true,
    },
  );
});
