import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { EventOutcome } from '../../src/webhooks/worker.js';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutLineItem, checkoutSession, deliver, event, refund, settleWebhooks, uniqueId } from '../helpers/stripe-events.js';

// The worker applies several events at once per process, in lanes: events that name the same
// Stripe object (a customer, a payment intent...) never run at once and start in event order,
// others run side by side; with two processes and several lanes each, the ledger ends as a
// serial application leaves it.
let database: TestDatabase;
let fake: FakeStripe;
let first: TestApp;
let second: TestApp;
const lanesMax = 4;

before(async () => {
  fake = await new FakeStripe().start();
  database = await createTestDatabase(40);
  first = await createTestApp({ database, stripeApiBase: fake.url, workerOptions: { concurrentEventsMax: lanesMax, batchSizeMax: 12 } });
  second = await createTestApp({ database, stripeApiBase: fake.url, workerOptions: { concurrentEventsMax: lanesMax, batchSizeMax: 12 } });
});
after(async () => {
  await first.close();
  await second.close();
  await database.close();
  await fake.stop();
});

type StripeEvent = Record<string, any>;

interface Customer {
  accountId: string;
  customer: string;
  /** Every event of the customer, in the order Stripe created them. */
  events: StripeEvent[];
  expectedCredits: number;
}

/**
 * A customer who buys `packs` packs of 1,000 credits (half of the sessions without their line
 * items, so Tally asks the fake Stripe first) and has some of them partly refunded.
 */
async function customerHistory(packs: number, created: () => number): Promise<Customer> {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  await fundedAccount(first, accountId, 0);
  const events: StripeEvent[] = [];
  let expectedCredits = 0;
  for (let pack = 0; pack < packs; pack += 1) {
    const paymentIntent = uniqueId('pi');
    const fetched = pack % 2 === 1;
    const session = checkoutSession({
      mode: 'payment',
      accountId,
      customer,
      paymentIntent,
      packId: 'pack_1000',
      lineItemsInPayload: !fetched,
    });
    if (fetched) fake.checkoutLineItems.set(session.id, [checkoutLineItem({ price: 'price_pack_1000' })]);
    events.push(event('checkout.session.completed', session, { created: created() }));
    expectedCredits += 1000;
    if (pack % 3 === 0) {
      const amount = 100 * (pack + 1);
      events.push(event('refund.created', refund({ amount, paymentIntent }), { created: created() }));
      expectedCredits -= amount;
    }
  }
  return { accountId, customer, events, expectedCredits };
}

async function histories(count: number, packs: number): Promise<Customer[]> {
  let clock = 1_900_000_000;
  const created = () => (clock += 1);
  const customers: Customer[] = [];
  for (let index = 0; index < count; index += 1) customers.push(await customerHistory(packs, created));
  return customers;
}

/** The Stripe objects that must order two events: the customer and the payment intent. */
const orderingObjects = (stripeEvent: StripeEvent): string[] => {
  const object = stripeEvent.data.object;
  return [object.customer, object.payment_intent].filter((value): value is string => typeof value === 'string');
};

async function assertLedger(customers: Customer[]): Promise<void> {
  for (const { accountId, expectedCredits, events } of customers) {
    const { rows } = await database.db.query<{ available: number; entry_sum: number; grants: number }>(
      `select available, (select sum(amount) from entries where account_id = $1)::bigint as entry_sum,
         (select count(*) from grants where account_id = $1)::int as grants
       from accounts where id = $1`,
      [accountId],
    );
    const packs = events.filter((stripeEvent) => stripeEvent.type === 'checkout.session.completed').length;
    assert.deepEqual(rows[0], { available: expectedCredits, entry_sum: expectedCredits, grants: packs }, accountId);
  }
  const ids = customers.flatMap((customer) => customer.events.map((stripeEvent) => stripeEvent.id as string));
  const { rows } = await database.db.query<{ status: string; count: number }>(
    `select status, count(*)::int as count from webhook_events where id = any($1) group by status`,
    [ids],
  );
  assert.deepEqual(rows, [{ status: 'processed', count: ids.length }]);
}

describe('webhook apply in lanes', () => {
  it('never applies two events of one customer or payment at once, starts them in event order, and fills the other lanes', async () => {
    const customers = await histories(6, 6);
    const all = customers.flatMap((customer) => customer.events).sort((a, b) => a.created - b.created);
    // Stored one at a time in Stripe's order, so the inbox's order (received, created, id) is it.
    for (const stripeEvent of all) assert.equal((await deliver(first, stripeEvent)).status, 200);
    const worker = first.parts.worker;
    const byId = new Map(all.map((stripeEvent) => [stripeEvent.id as string, stripeEvent]));
    const inFlight = new Set<string>();
    const started: string[] = [];
    let mostAtOnce = 0;
    const processOne = worker.processOne.bind(worker);
    worker.processOne = async (eventId: string): Promise<EventOutcome> => {
      const objects = orderingObjects(byId.get(eventId) ?? {});
      for (const other of inFlight) {
        const shared = orderingObjects(byId.get(other) ?? {}).filter((object) => objects.includes(object));
        assert.deepEqual(shared, [], `${eventId} started while ${other} was in progress`);
      }
      inFlight.add(eventId);
      started.push(eventId);
      mostAtOnce = Math.max(mostAtOnce, inFlight.size);
      try {
        return await processOne(eventId);
      } finally {
        inFlight.delete(eventId);
      }
    };
    try {
      await worker.drain();
    } finally {
      worker.processOne = processOne;
    }
    assert.ok(mostAtOnce > 1 && mostAtOnce <= lanesMax, `between 2 and ${lanesMax} events at once, not ${mostAtOnce}`);
    for (const customer of customers) {
      const order = started.filter((id) => customer.events.some((stripeEvent) => stripeEvent.id === id));
      assert.deepEqual(
        order,
        customer.events.map((stripeEvent) => stripeEvent.id),
        `the events of ${customer.customer} start in Stripe's order`,
      );
    }
    const retried = await database.db.query<{ count: number }>(
      `select count(*)::int as count from webhook_events where id = any($1) and attempts <> 1`,
      [[...byId.keys()]],
    );
    assert.equal(retried.rows[0]?.count, 0, 'no refund ran before the purchase it refunds, so none had to wait');
    await assertLedger(customers);
  });

  it('leaves the ledger a serial application leaves when two processes with several lanes apply a shuffled, duplicated burst', async () => {
    first.parts.startBackground();
    second.parts.startBackground();
    const customers = await histories(5, 9);
    const copies = customers.flatMap((customer) =>
      customer.events.flatMap((stripeEvent, index) => Array.from({ length: 1 + (index % 3) }, () => stripeEvent)),
    );
    // A fixed shuffle, so a failure replays.
    let seed = 11;
    const random = () => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) / 2 ** 31;
    for (let index = copies.length - 1; index > 0; index -= 1) {
      const other = Math.floor(random() * (index + 1));
      [copies[index], copies[other]] = [copies[other] as StripeEvent, copies[index] as StripeEvent];
    }
    for (let index = 0; index < copies.length; index += 8) {
      const burst = copies.slice(index, index + 8);
      const responses = await Promise.all(burst.map((stripeEvent, offset) => deliver(offset % 2 === 0 ? first : second, stripeEvent)));
      assert.ok(responses.every((response) => response.status === 200));
    }
    await settleWebhooks(first);
    await settleWebhooks(second);
    await assertLedger(customers);
  });
});

describe('drain', () => {
  it('returns only when every due event has been attempted, pages and concurrent passes included', async () => {
    // Three pages of due events (the worker reads 12 at a time), and two passes of one process
    // at once: each returns only when all of them have been attempted.
    const customers = await histories(12, 3);
    const all = customers.flatMap((customer) => customer.events);
    const database2 = await createTestDatabase(20);
    const alone = await createTestApp({
      database: database2,
      stripeApiBase: fake.url,
      workerOptions: { concurrentEventsMax: 3, batchSizeMax: 12 },
    });
    try {
      for (const customer of customers) await fundedAccount(alone, customer.accountId, 0);
      for (const stripeEvent of all) assert.equal((await deliver(alone, stripeEvent)).status, 200);
      const pending = async () =>
        (await database2.db.query<{ count: number }>(`select count(*)::int as count from webhook_events where status = 'pending'`)).rows[0]
          ?.count;
      assert.ok(all.length > 24);
      const firstPass = alone.parts.worker.drain();
      const secondPass = alone.parts.worker.drain().then(pending);
      await firstPass;
      assert.equal(await pending(), 0, 'the first pass returned with nothing due left');
      assert.equal(await secondPass, 0, 'the second pass too');
      const { rows } = await database2.db.query<{ count: number }>(
        `select count(*)::int as count from webhook_events where status = 'processed' and attempts = 1`,
      );
      assert.equal(rows[0]?.count, all.length, 'each applied once');
    } finally {
      await alone.close();
      await database2.close();
    }
  });
});
