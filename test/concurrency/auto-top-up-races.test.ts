import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { createTestApp, fundedAccount, settleEvents, TestClock, type TestApp } from '../helpers/app.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { deliver, event, settleWebhooks } from '../helpers/stripe-events.js';

// Auto top-up on two Tally processes sharing one database, one Stripe and one clock: concurrent
// spends (usage and holds) on both start one top-up; both payer jobs racing for 30 hours of a
// payment that stays processing create one PaymentIntent; its success, found by both jobs and
// delivered as a webhook to both processes at once, is granted once.
let database: TestDatabase;
let first: TestApp;
let second: TestApp;
let fake: FakeStripe;
const clock = new TestClock();
const setting = { enabled: true, threshold: 1500, pack_id: 'pack_1000', max_per_month: 5 };

before(async () => {
  fake = await new FakeStripe().start();
  fake.clock = clock.now;
  database = await createTestDatabase(40);
  first = await createTestApp({ database, clock, stripeApiBase: fake.url });
  second = await createTestApp({ database, clock, stripeApiBase: fake.url });
});
after(async () => {
  await first.close();
  await second.close();
  await database.close();
  await fake.stop();
});

let keys = 0;
/** 60 spends of 10 credits, half usage and half holds, alternating between the two processes, all at once. */
async function concurrentSpends(accountId: string): Promise<void> {
  const answers = await Promise.all(
    Array.from({ length: 60 }, (_, index) => {
      const process = index % 2 === 0 ? first : second;
      const kind = index % 4 < 2 ? 'usage' : 'holds';
      return process.call('POST', `/v1/accounts/${accountId}/${kind}`, { amount: 10, idempotency_key: `race-${(keys += 1)}` });
    }),
  );
  for (const answer of answers) assert.ok(answer.status === 200 || answer.status === 201, JSON.stringify(answer.body));
}

async function customerAccount(accountId: string, credits: number): Promise<void> {
  await fundedAccount(first, accountId, credits);
  await database.db.query('update accounts set stripe_customer_id = $2 where id = $1', [accountId, `cus_${accountId}`]);
  fake.customers.set(`cus_${accountId}`, { invoice_settings: { default_payment_method: 'pm_card_visa' } });
  assert.equal((await first.call('PUT', `/v1/accounts/${accountId}/auto-top-up`, setting)).status, 200);
}

/** Both processes' payer jobs, at once, every hour of the clock for `hours` hours. */
async function bothJobsHourly(hours: number): Promise<void> {
  for (let hour = 0; hour < hours; hour += 1) {
    clock.advanceSeconds(3600);
    await Promise.all([first.parts.topUps?.runOnce(), second.parts.topUps?.runOnce()]);
  }
}

const creates = (accountId: string) =>
  fake.requests.filter(
    (request) =>
      request.method === 'POST' && request.path === '/v1/payment_intents' && request.params['metadata[tally_account_id]'] === accountId,
  );

const statuses = async (accountId: string): Promise<string[]> =>
  (await database.db.query<{ status: string }>('select status from top_ups where account_id = $1 order by id', [accountId])).rows.map(
    (row) => row.status,
  );

it('concurrent spends on two processes start one top-up; a payment processing for 30 hours has one PaymentIntent and is granted once', async () => {
  await customerAccount('race_sepa', 2000);
  await concurrentSpends('race_sepa'); // 2000 → 1400, crossing 1500 and spending on below it
  assert.deepEqual(await statuses('race_sepa'), ['pending']);
  fake.paymentIntentOutcome = 'processing';
  try {
    await bothJobsHourly(30);
  } finally {
    fake.paymentIntentOutcome = 'succeeded';
  }
  assert.equal(creates('race_sepa').length, 1);
  const { rows } = await database.db.query<{ payment_intent: string }>(`select payment_intent from top_ups where account_id = 'race_sepa'`);
  const paymentIntent = rows[0]?.payment_intent;
  assert.ok(paymentIntent !== undefined);
  const settled = fake.settlePaymentIntent(paymentIntent, 'succeeded');
  const webhook = event('payment_intent.succeeded', settled);
  await Promise.all([bothJobsHourly(2), deliver(first, webhook), deliver(second, webhook)]);
  await Promise.all([settleWebhooks(first), settleWebhooks(second)]);
  await bothJobsHourly(1);
  assert.deepEqual(await statuses('race_sepa'), ['succeeded']);
  const balance = await first.call('GET', '/v1/accounts/race_sepa/balance');
  // 300 used, 300 held (the holds expired during the 30 hours and gave theirs back), one pack.
  assert.deepEqual(balance.body, { account_id: 'race_sepa', available: 2000 - 300 + 1000, held: 0, debt: 0 });
  const grants = await database.db.query<{ count: number }>(
    `select count(*)::int as count from grants where account_id = 'race_sepa' and source = 'purchase'`,
  );
  assert.equal(grants.rows[0]?.count, 1);
  await settleEvents(first);
  const events = await database.db.query<{ count: number }>(
    `select count(*)::int as count from events where account_id = 'race_sepa' and type = 'topup.succeeded'`,
  );
  assert.equal(events.rows[0]?.count, 1);
});

it('after a decline, concurrent spends below the threshold on two processes start exactly one new top-up, paid once', async () => {
  await customerAccount('race_retry', 1600);
  await first.call('POST', '/v1/accounts/race_retry/usage', { amount: 200, idempotency_key: 'race-retry-first' }); // 1400
  fake.paymentIntentOutcome = 'declined';
  try {
    await Promise.all([first.parts.topUps?.runOnce(), second.parts.topUps?.runOnce()]);
  } finally {
    fake.paymentIntentOutcome = 'succeeded';
  }
  assert.deepEqual(await statuses('race_retry'), ['failed']);
  await concurrentSpends('race_retry'); // 1400 → 800, every spend made below the threshold
  assert.deepEqual(await statuses('race_retry'), ['failed', 'pending']);
  await Promise.all([first.parts.topUps?.runOnce(), second.parts.topUps?.runOnce()]);
  assert.deepEqual(await statuses('race_retry'), ['failed', 'succeeded']);
  assert.equal(creates('race_retry').length, 2);
  assert.equal((await first.call('GET', '/v1/accounts/race_retry/balance')).body.available, 800 + 1000);
});
