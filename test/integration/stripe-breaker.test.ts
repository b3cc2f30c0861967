import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { defaultWorkerOptions } from '../../src/webhooks/worker.js';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, refund, settleWebhooks, uniqueId } from '../helpers/stripe-events.js';

// Proves: the breaker opens after consecutive timeouts (never after a 4xx), events that need
// the API wait instead of failing while it is open, and all of them apply once Stripe recovers.
let test: TestApp;
let fake: FakeStripe;

before(async () => {
  fake = await new FakeStripe().start();
  test = await createTestApp({ stripeApiBase: fake.url, breakerHalfOpenAfterMilliseconds: 300 });
});
after(async () => {
  await test.close();
  await fake.stop();
});

async function packBuyer(): Promise<{ accountId: string; paymentIntent: string }> {
  const accountId = uniqueId('acct');
  const paymentIntent = uniqueId('pi');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000' }),
    ),
  );
  await settleWebhooks(test);
  return { accountId, paymentIntent };
}

it('does not count a 4xx answer as a failure', async () => {
  const { paymentIntent } = await packBuyer();
  void paymentIntent;
  const unknownCharge = refund({ amount: 100, paymentIntent: null, charge: uniqueId('ch_unknown') });
  await deliver(test, event('refund.created', unknownCharge));
  await test.parts.worker.drain();
  const breaker = await test.admin('GET', '/v1/admin/stripe-breaker');
  assert.deepEqual(breaker.body, { state: 'closed', failures: 0, opened_at: null });
  await test.database.db.query(`update webhook_events set status = 'failed' where status = 'pending'`);
});

it('opens after consecutive timeouts, holds events without failing them, and applies them after recovery', async () => {
  // Enough events that, with the worker's lanes each holding one until its call times out,
  // the last ones find the breaker already open.
  const buyers = await Promise.all(Array.from({ length: 2 * defaultWorkerOptions.concurrentEventsMax + 2 }, () => packBuyer()));
  fake.mode = 'timeout';
  for (const buyer of buyers) {
    const charge = uniqueId('ch');
    fake.charges.set(charge, { payment_intent: buyer.paymentIntent });
    await deliver(test, event('refund.created', refund({ amount: 400, paymentIntent: null, charge })));
  }
  await test.parts.worker.drain();
  const open = await test.admin('GET', '/v1/admin/stripe-breaker');
  assert.equal(open.body.state, 'open');
  assert.ok(open.body.failures >= 5);
  assert.ok(open.body.opened_at);
  const held = await test.database.db.query<{ status: string; attempts: number; last_error: string }>(
    `select status, attempts, last_error from webhook_events where type = 'refund.created' and status <> 'failed'`,
  );
  assert.equal(held.rows.length, buyers.length);
  assert.ok(
    held.rows.every((row) => row.status === 'pending' && row.attempts === 0),
    'waiting for Stripe does not use up retries',
  );
  assert.ok(held.rows.some((row) => /circuit breaker is open/.test(row.last_error)));
  const checkout = await test.call('POST', `/v1/accounts/${buyers[0]?.accountId}/checkout`, {
    pack_id: 'pack_1000',
    success_url: 'https://a.test/ok',
    cancel_url: 'https://a.test/no',
  });
  assert.equal(checkout.status, 503);
  assert.equal(checkout.body.error.code, 'stripe_unavailable');

  fake.mode = 'ok';
  await new Promise((resolve) => setTimeout(resolve, 400));
  await settleWebhooks(test);
  for (const buyer of buyers) {
    assert.equal((await test.call('GET', `/v1/accounts/${buyer.accountId}/balance`)).body.available, 600, 'the refund applied once');
  }
  assert.equal((await test.admin('GET', '/v1/admin/stripe-breaker')).body.state, 'closed');
});
