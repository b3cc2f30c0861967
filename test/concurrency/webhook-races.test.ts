import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, it } from 'node:test';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { createTestDatabase, startConnectionKiller, type TestDatabase } from '../helpers/database.js';
import {
  checkoutSession,
  deliver,
  event,
  invoice,
  invoicePayment,
  month,
  settleWebhooks,
  subscription,
  uniqueId,
} from '../helpers/stripe-events.js';

// The race that motivated Tally: a renewal's invoice.paid, invoice.payment_succeeded and
// customer.subscription.updated, each delivered 20 times at once, with workers running in the
// background, on one process and then split across two processes on one database.
let database: TestDatabase;
let first: TestApp;
let second: TestApp;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => {
  database = await createTestDatabase(40);
  first = await createTestApp({ database });
  second = await createTestApp({ database });
  first.parts.startBackground();
  second.parts.startBackground();
});
after(async () => {
  await first.close();
  await second.close();
  await database.close();
});

/** An account whose checkout started a monthly Plus subscription, and that period's invoice. */
async function subscriber(): Promise<{ accountId: string; customer: string; subscriptionId: string; paid: ReturnType<typeof invoice> }> {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  await fundedAccount(first, accountId, 0);
  await deliver(
    first,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
  );
  const paid = invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }] });
  return { accountId, customer, subscriptionId, paid };
}

async function renewalBurst(targets: TestApp[]): Promise<{ accountId: string; subscriptionId: string }> {
  const { accountId, customer, subscriptionId, paid: renewal } = await subscriber();
  const events = [
    event('invoice.paid', renewal),
    event('invoice.payment_succeeded', renewal),
    event(
      'customer.subscription.updated',
      subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
    ),
  ];
  const deliveries = events.flatMap((stripeEvent) =>
    Array.from({ length: 20 }, (_, copy) => deliver(targets[copy % targets.length] ?? first, stripeEvent)),
  );
  const responses = await Promise.all(deliveries);
  assert.ok(
    responses.every((response) => response.status === 200),
    'every delivery is acknowledged',
  );
  await settleWebhooks(first);
  return { accountId, subscriptionId };
}

async function assertOneGrant(accountId: string, subscriptionId: string): Promise<void> {
  const { rows } = await database.db.query<{ grant_key: string; amount: number }>(
    'select grant_key, amount from grants where account_id = $1',
    [accountId],
  );
  assert.deepEqual(rows, [{ grant_key: `period:${subscriptionId}:si_test:${t0}`, amount: 4000 }]);
  const entries = await database.db.query<{ count: number }>(
    `select count(*)::int as count from entries where account_id = $1 and kind = 'grant'`,
    [accountId],
  );
  assert.equal(entries.rows[0]?.count, 1);
  const events = await database.db.query<{ count: number }>(
    `select count(*)::int as count from webhook_events where account_id = $1 and status = 'processed'`,
    [accountId],
  );
  assert.equal(events.rows[0]?.count, 4, 'each distinct event stored once and processed once');
}

it('grants one period when a renewal is delivered 20 times per event at once', async () => {
  const { accountId, subscriptionId } = await renewalBurst([first]);
  await assertOneGrant(accountId, subscriptionId);
});

it('grants one period when the deliveries are split across two processes', async () => {
  for (let round = 0; round < 3; round += 1) {
    const { accountId, subscriptionId } = await renewalBurst([first, second]);
    await assertOneGrant(accountId, subscriptionId);
  }
});

it("gives the invoice's payment its payment intent when invoice_payment.paid races invoice.paid on two processes", async () => {
  for (let round = 0; round < 10; round += 1) {
    const { paid } = await subscriber();
    const paymentIntent = uniqueId('pi');
    const responses = await Promise.all([
      deliver(first, event('invoice.paid', paid)),
      deliver(second, event('invoice_payment.paid', invoicePayment({ invoice: String(paid.id), paymentIntent }))),
    ]);
    assert.deepEqual(
      responses.map((response) => response.status),
      [200, 200],
    );
    await settleWebhooks(first);
    const { rows } = await database.db.query<{ payment_intent: string | null }>(
      'select payment_intent from payments where invoice_id = $1',
      [paid.id],
    );
    assert.deepEqual(rows, [{ payment_intent: paymentIntent }], `round ${round}`);
  }
});

it('applies every effect once while the database keeps killing connections during a burst', async () => {
  const subscribers = await Promise.all(Array.from({ length: 10 }, () => subscriber()));
  const events = subscribers.flatMap(({ customer, subscriptionId, paid }) => [
    event('invoice.paid', paid),
    event('invoice.payment_succeeded', paid),
    event(
      'customer.subscription.updated',
      subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
    ),
  ]);
  // Every 60 ms, 15 times, every connection of both Tally "processes" is killed (few enough
  // rounds that no event uses up its retries while the database is this sick).
  const killer = await startConnectionKiller(database.url);
  // Stripe delivers each event 3 times, at once, to either process, and redelivers what was not acknowledged.
  let pending = events.flatMap((stripeEvent) => [0, 1, 2].map((copy) => ({ stripeEvent, target: copy % 2 === 0 ? first : second })));
  let refused = 0;
  while (pending.length > 0) {
    const statuses = await Promise.all(
      pending.map(({ stripeEvent, target }) => deliver(target, stripeEvent).then((response) => response.status)),
    );
    assert.ok(
      statuses.every((status) => status === 200 || status === 503),
      `a delivery is acknowledged or refused with 503: ${statuses.join(',')}`,
    );
    const again = pending.filter((_, index) => statuses[index] !== 200);
    refused += again.length;
    pending = again;
    if (pending.length > 0) await sleep(50);
  }
  const killed = await killer.stop();
  assert.ok(killed > 0, 'connections were killed');
  await settleWebhooks(first);
  await settleWebhooks(second);
  for (const { accountId, subscriptionId } of subscribers) await assertOneGrant(accountId, subscriptionId);
  const { rows } = await database.db.query<{ wrong: number }>(
    `select count(*)::int as wrong from accounts a
     where a.available - a.debt <> coalesce((select sum(amount) from entries e where e.account_id = a.id), 0)`,
  );
  assert.equal(rows[0]?.wrong, 0, 'every balance equals its entries');
  console.log(`# ${killed} connections killed, ${refused} deliveries refused and redelivered`);
});
