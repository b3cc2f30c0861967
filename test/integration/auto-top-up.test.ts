import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { completeTopUp, failTopUp } from '../../src/billing/top-up-outcomes.js';
import { topUpAttemptsMax, topUpLeaseSeconds } from '../../src/billing/top-up-payer.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { fundedAccount, settleEvents, startWithFakeStripe, stopWithFakeStripe, testCatalog, type TestApp } from '../helpers/app.js';
import { deliver, event, settleWebhooks } from '../helpers/stripe-events.js';

// Auto top-up against the fake Stripe: one PaymentIntent per crossing however many spends race
// over it, granted once whether the job or the webhook comes first, failures, the monthly
// maximum, and three failures turning it off. Every refusal of the setting changes nothing.
let test: TestApp;
let fake: FakeStripe;

before(async () => {
  ({ test, fake } = await startWithFakeStripe());
  fake.clock = test.clock.now;
});
after(async () => {
  await stopWithFakeStripe(test, fake);
});

const setting = { enabled: true, threshold: 500, pack_id: 'pack_1000', max_per_month: 5 };
let keys = 0;
const spend = (accountId: string, amount: number) =>
  test.call('POST', `/v1/accounts/${accountId}/usage`, { amount, idempotency_key: `tu-${(keys += 1)}` });
const runner = () => {
  const topUps = test.parts.topUps;
  assert.ok(topUps !== undefined);
  return topUps;
};

/** An account with credits, a linked Stripe customer and (unless told otherwise) a default payment method. */
async function customerAccount(accountId: string, credits: number, paymentMethod: string | null = 'pm_card_visa'): Promise<void> {
  await fundedAccount(test, accountId, credits);
  const customer = `cus_${accountId}`;
  await test.database.db.query('update accounts set stripe_customer_id = $2 where id = $1', [accountId, customer]);
  fake.customers.set(customer, { invoice_settings: { default_payment_method: paymentMethod } });
}

async function topUps(accountId: string): Promise<any[]> {
  return (
    await test.database.db.query('select id, number, status, payment_intent, failure_code from top_ups where account_id = $1 order by id', [
      accountId,
    ])
  ).rows;
}

async function eventsOf(accountId: string, prefix = 'topup.'): Promise<any[]> {
  await settleEvents(test);
  const answer = await test.call('GET', `/v1/events?account_id=${accountId}&limit=500`);
  return answer.body.events.filter((item: any) => item.type.startsWith(prefix));
}

const available = async (accountId: string): Promise<number> =>
  (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available;

describe('the setting', () => {
  it('refuses an unknown pack, an account without customer or default payment method, an unknown account and bad input, writing nothing', async () => {
    await customerAccount('tu_refuse', 100, null);
    await fundedAccount(test, 'tu_nocustomer', 100);
    const cases: [string, unknown, number, string][] = [
      ['tu_refuse', { ...setting, pack_id: 'pack_nope' }, 404, 'pack_not_found'],
      ['tu_refuse', setting, 409, 'no_payment_method'],
      ['tu_nocustomer', setting, 409, 'no_payment_method'],
      ['tu_nobody', setting, 404, 'account_not_found'],
      ['tu_refuse', { ...setting, threshold: 0 }, 400, 'invalid_request'],
      ['tu_refuse', { ...setting, max_per_month: 0 }, 400, 'invalid_request'],
      ['tu_refuse', { enabled: true }, 400, 'invalid_request'],
    ];
    for (const [account, body, status, code] of cases) {
      const answer = await test.call('PUT', `/v1/accounts/${account}/auto-top-up`, body);
      assert.equal(answer.status, status, JSON.stringify(body));
      assert.equal(answer.body.error.code, code);
    }
    const { rows } = await test.database.db.query(
      `select count(*)::int as count from auto_top_ups where account_id in ('tu_refuse', 'tu_nocustomer')`,
    );
    assert.equal(rows[0]?.count, 0);
    assert.ok(
      fake.requests.some((request) => request.path === '/v1/customers/cus_tu_refuse'),
      'the payment method was asked of Stripe',
    );
  });

  it('answers the setting, and disabling needs no payment method', async () => {
    await customerAccount('tu_setting', 1000);
    const answer = await test.call('PUT', '/v1/accounts/tu_setting/auto-top-up', setting);
    assert.equal(answer.status, 200);
    assert.deepEqual(
      { ...answer.body, updated_at: undefined },
      { account_id: 'tu_setting', ...setting, failures_in_row: 0, updated_at: undefined },
    );
    fake.customers.set('cus_tu_setting', { invoice_settings: { default_payment_method: null } });
    const off = await test.call('PUT', '/v1/accounts/tu_setting/auto-top-up', { ...setting, enabled: false });
    assert.equal(off.status, 200);
    assert.equal(off.body.enabled, false);
  });
});

describe('paying', () => {
  it('50 concurrent spends crossing the threshold start exactly one PaymentIntent, granted once with topup.succeeded', async () => {
    await customerAccount('tu_race', 1000);
    assert.equal((await test.call('PUT', '/v1/accounts/tu_race/auto-top-up', setting)).status, 200);
    const answers = await Promise.all(Array.from({ length: 50 }, () => spend('tu_race', 12)));
    assert.ok(answers.every((answer) => answer.status === 200));
    assert.equal((await topUps('tu_race')).length, 1, 'one top-up for one crossing');
    const before = fake.createdPaymentIntents.length;
    await Promise.all([runner().runOnce(), runner().runOnce()]);
    const created = fake.createdPaymentIntents.slice(before);
    assert.equal(created.length, 1);
    const request = fake.requests.find(
      (candidate) => candidate.path === '/v1/payment_intents' && candidate.idempotencyKey === 'topup:tu_race:1',
    );
    assert.equal(request?.params.off_session, 'true');
    assert.equal(request?.params.payment_method, 'pm_card_visa');
    assert.equal(request?.params['metadata[tally_account_id]'], 'tu_race');
    assert.equal(await available('tu_race'), 1000 - 600 + 1000);
    const [row] = await topUps('tu_race');
    assert.equal(row.status, 'succeeded');
    const succeeded = await eventsOf('tu_race');
    assert.deepEqual(
      succeeded.map((item) => item.type),
      ['topup.succeeded'],
    );
    assert.equal(succeeded[0].data.credits, 1000);
    assert.equal(succeeded[0].data.payment_intent, created[0]?.id);
  });

  it('grants once when the webhook and the API answer race, in either order', async () => {
    await customerAccount('tu_webhook', 600);
    await test.call('PUT', '/v1/accounts/tu_webhook/auto-top-up', setting);
    await spend('tu_webhook', 200);
    fake.paymentIntentOutcome = 'processing';
    await runner().runOnce();
    fake.paymentIntentOutcome = 'succeeded';
    const [row] = await topUps('tu_webhook');
    assert.equal(row.status, 'pending');
    const intent = { ...fake.paymentIntents.get(row.payment_intent), status: 'succeeded', amount_received: 1000 };
    const paid = {
      accountId: 'tu_webhook',
      topUpId: Number(row.id),
      paymentIntent: row.payment_intent,
      amount: 1000,
      currency: 'usd',
      now: test.clock.now(),
    };
    const stripeEvent = event('payment_intent.succeeded', intent);
    await Promise.all([
      (async () => {
        assert.equal((await deliver(test, stripeEvent)).status, 200);
        await settleWebhooks(test);
      })(),
      test.database.db.withTransaction((client) => completeTopUp(client, testCatalog(), paid)),
    ]);
    // The webhook again, and the job's answer again: both no-ops.
    assert.equal((await deliver(test, event('payment_intent.succeeded', intent))).status, 200);
    await settleWebhooks(test);
    assert.equal(await test.database.db.withTransaction((client) => completeTopUp(client, testCatalog(), paid)), false);
    assert.equal(await available('tu_webhook'), 400 + 1000);
    const grants = await test.database.db.query(
      `select count(*)::int as count from grants where account_id = 'tu_webhook' and grant_key = $1`,
      [`purchase:${row.payment_intent}`],
    );
    assert.equal(grants.rows[0]?.count, 1);
    assert.equal((await eventsOf('tu_webhook')).length, 1);
    const payment = await test.database.db.query('select credits, amount_paid from payments where payment_intent = $1', [
      row.payment_intent,
    ]);
    assert.deepEqual(payment.rows[0], { credits: 1000, amount_paid: 1000 });
  });

  it('a decline and a payment that needs authentication are topup.failed, with nothing granted', async () => {
    for (const outcome of ['declined', 'authentication_required'] as const) {
      const account = `tu_${outcome}`;
      await customerAccount(account, 600);
      await test.call('PUT', `/v1/accounts/${account}/auto-top-up`, setting);
      await spend(account, 200);
      fake.paymentIntentOutcome = outcome;
      await runner().runOnce();
      fake.paymentIntentOutcome = 'succeeded';
      assert.equal(await available(account), 400);
      const [row] = await topUps(account);
      assert.equal(row.status, 'failed');
      const failed = await eventsOf(account);
      assert.deepEqual(
        failed.map((item) => item.type),
        ['topup.failed'],
      );
      assert.equal(failed[0].data.code, outcome === 'declined' ? 'card_declined' : 'authentication_required');
      assert.equal(failed[0].data.auto_top_up_disabled, false);
    }
  });

  it('three failures in a row turn auto top-up off with an event; no further top-up starts', async () => {
    await customerAccount('tu_three', 600);
    await test.call('PUT', '/v1/accounts/tu_three/auto-top-up', setting);
    fake.paymentIntentOutcome = 'declined';
    for (let round = 0; round < 3; round += 1) {
      await spend('tu_three', 200); // 600 → 400: crosses
      await runner().runOnce();
      await fundedAccount(test, 'tu_three', 200); // back to 600
    }
    fake.paymentIntentOutcome = 'succeeded';
    const failed = await eventsOf('tu_three');
    assert.deepEqual(
      failed.map((item) => item.data.failures_in_row),
      [1, 2, 3],
    );
    assert.deepEqual(
      failed.map((item) => item.data.auto_top_up_disabled),
      [false, false, true],
    );
    const { rows } = await test.database.db.query(`select enabled from auto_top_ups where account_id = 'tu_three'`);
    assert.equal(rows[0]?.enabled, false);
    await spend('tu_three', 200);
    assert.equal((await topUps('tu_three')).length, 3, 'no top-up once it is off');
  });

  it('a success between declines starts the count again: two declines, a success, two declines leave it on', async () => {
    // "Three failures in a row" (SPEC): a paid top-up ends the row. Found by mutation: no test
    // noticed a success that kept the count.
    await customerAccount('tu_row', 600);
    await test.call('PUT', '/v1/accounts/tu_row/auto-top-up', setting);
    const round = async (outcome: 'declined' | 'succeeded') => {
      fake.paymentIntentOutcome = outcome;
      await spend('tu_row', 200); // 600 → 400: crosses
      await runner().runOnce();
      fake.paymentIntentOutcome = 'succeeded';
      const left = await available('tu_row');
      if (left > 600) await spend('tu_row', left - 600);
      else await fundedAccount(test, 'tu_row', 600 - left);
    };
    for (const outcome of ['declined', 'declined', 'succeeded', 'declined', 'declined'] as const) await round(outcome);
    const events = await eventsOf('tu_row');
    assert.deepEqual(
      events.map((item) => [item.type, item.data.failures_in_row ?? null]),
      [
        ['topup.failed', 1],
        ['topup.failed', 2],
        ['topup.succeeded', null],
        ['topup.failed', 1],
        ['topup.failed', 2],
      ],
    );
    const { rows } = await test.database.db.query(`select enabled, failures_in_row from auto_top_ups where account_id = 'tu_row'`);
    assert.deepEqual(rows[0], { enabled: true, failures_in_row: 2 });
  });

  it('starts at most max_per_month top-ups a UTC month, and again the next month', async () => {
    await customerAccount('tu_month', 600);
    await test.call('PUT', '/v1/accounts/tu_month/auto-top-up', { ...setting, max_per_month: 2 });
    for (let round = 0; round < 3; round += 1) {
      await spend('tu_month', (await available('tu_month')) - 400); // down to 400: crosses
      await runner().runOnce();
    }
    assert.equal((await topUps('tu_month')).length, 2);
    assert.equal(await available('tu_month'), 400);
    test.clock.advanceSeconds(32 * 24 * 3600);
    await fundedAccount(test, 'tu_month', 200);
    await spend('tu_month', 200);
    await runner().runOnce();
    assert.deepEqual(
      (await topUps('tu_month')).map((row) => row.status),
      ['succeeded', 'succeeded', 'succeeded'],
    );
  });

  it('a payment that needs the customer (requires_action) is topup.failed authentication_required, and the next spend tries again', async () => {
    await customerAccount('tu_action', 600);
    await test.call('PUT', '/v1/accounts/tu_action/auto-top-up', setting);
    await spend('tu_action', 200);
    fake.paymentIntentOutcome = 'requires_action';
    try {
      await runner().runOnce();
    } finally {
      fake.paymentIntentOutcome = 'succeeded';
    }
    assert.deepEqual(
      (await eventsOf('tu_action')).map((item) => [item.type, item.data.code]),
      [['topup.failed', 'authentication_required']],
    );
    await spend('tu_action', 10); // 400 → 390, already below: qualifies
    await runner().runOnce();
    assert.deepEqual(
      (await topUps('tu_action')).map((row) => row.status),
      ['failed', 'succeeded'],
    );
    assert.equal(await available('tu_action'), 390 + 1000);
  });
});

describe('failures Stripe reports later, and failures of the job itself', () => {
  /** A pending top-up of a fresh account, paid as `processing` so that its PaymentIntent is recorded. */
  async function processingTopUp(accountId: string): Promise<{ id: number; paymentIntent: string }> {
    await customerAccount(accountId, 600);
    await test.call('PUT', `/v1/accounts/${accountId}/auto-top-up`, setting);
    await spend(accountId, 200);
    fake.paymentIntentOutcome = 'processing';
    await runner().runOnce();
    fake.paymentIntentOutcome = 'succeeded';
    const [row] = await topUps(accountId);
    assert.equal(row.status, 'pending');
    return { id: Number(row.id), paymentIntent: row.payment_intent };
  }

  const failedIntent = (paymentIntent: string, metadata: Record<string, string>, code = 'card_declined') => ({
    ...fake.paymentIntents.get(paymentIntent),
    id: paymentIntent,
    status: 'requires_payment_method',
    metadata,
    last_payment_error: { type: 'card_error', code, message: 'Your card was declined.' },
  });
  const topUpMetadata = (accountId: string, topUpId: number) => ({
    tally_account_id: accountId,
    tally_top_up: String(topUpId),
    tally_pack: 'pack_1000',
  });

  it('a processing payment that Stripe reports failed is topup.failed once, however often the event comes; nothing is granted', async () => {
    const topUp = await processingTopUp('tu_async');
    const intent = failedIntent(topUp.paymentIntent, topUpMetadata('tu_async', topUp.id), 'authentication_required');
    for (let delivery = 0; delivery < 3; delivery += 1)
      assert.equal((await deliver(test, event('payment_intent.payment_failed', intent))).status, 200);
    await settleWebhooks(test);
    assert.deepEqual(
      (await topUps('tu_async')).map((row) => [row.status, row.failure_code]),
      [['failed', 'authentication_required']],
    );
    const failed = await eventsOf('tu_async');
    assert.deepEqual(
      failed.map((item) => [item.type, item.data.code, item.data.payment_intent, item.data.failures_in_row]),
      [['topup.failed', 'authentication_required', topUp.paymentIntent, 1]],
    );
    assert.equal(await available('tu_async'), 400);
    const { rows } = await test.database.db.query(`select failures_in_row from auto_top_ups where account_id = 'tu_async'`);
    assert.equal(rows[0]?.failures_in_row, 1);
  });

  it("the job's own decline and Stripe's payment_failed event for the same payment count one failure, in either order", async () => {
    // The job first: a synchronous decline, then the event Stripe sends for it.
    await customerAccount('tu_both_job', 600);
    await test.call('PUT', '/v1/accounts/tu_both_job/auto-top-up', setting);
    await spend('tu_both_job', 200);
    fake.paymentIntentOutcome = 'declined';
    await runner().runOnce();
    fake.paymentIntentOutcome = 'succeeded';
    const [declined] = await topUps('tu_both_job');
    assert.equal(declined.status, 'failed');
    await deliver(
      test,
      event('payment_intent.payment_failed', failedIntent(declined.payment_intent, topUpMetadata('tu_both_job', Number(declined.id)))),
    );
    await settleWebhooks(test);
    assert.equal((await eventsOf('tu_both_job')).length, 1);

    // The event first, then the job's answer (a decline) for the same top-up.
    const topUp = await processingTopUp('tu_both_event');
    await deliver(
      test,
      event('payment_intent.payment_failed', failedIntent(topUp.paymentIntent, topUpMetadata('tu_both_event', topUp.id))),
    );
    await settleWebhooks(test);
    await test.database.db.withTransaction((client) =>
      failTopUp(
        client,
        { id: topUp.id, account_id: 'tu_both_event' },
        { code: 'card_declined', message: 'Your card was declined.', paymentIntent: topUp.paymentIntent },
        test.clock.now(),
      ),
    );
    const failed = await eventsOf('tu_both_event');
    assert.deepEqual(
      failed.map((item) => item.data.failures_in_row),
      [1],
    );
  });

  it("ignores a payment_failed event that is not a top-up's, or that names a top-up paid with another PaymentIntent, changing nothing", async () => {
    const topUp = await processingTopUp('tu_other');
    const foreign = event('payment_intent.payment_failed', failedIntent(topUp.paymentIntent, {}));
    const mismatched = event('payment_intent.payment_failed', {
      ...failedIntent(topUp.paymentIntent, topUpMetadata('tu_other', topUp.id)),
      id: 'pi_someone_else',
    });
    const unknown = event('payment_intent.payment_failed', failedIntent(topUp.paymentIntent, topUpMetadata('tu_other', topUp.id + 1000)));
    for (const stripeEvent of [foreign, mismatched, unknown]) assert.equal((await deliver(test, stripeEvent)).status, 200);
    await settleWebhooks(test);
    const { rows } = await test.database.db.query<{ status: string }>('select status from webhook_events where id = any($1) order by id', [
      [foreign.id, mismatched.id, unknown.id],
    ]);
    assert.deepEqual(
      rows.map((row) => row.status),
      ['ignored', 'ignored', 'ignored'],
    );
    assert.deepEqual(
      (await topUps('tu_other')).map((row) => row.status),
      ['pending'],
    );
    assert.deepEqual(await eventsOf('tu_other'), []);
  });

  it('a customer whose default payment method is gone by the time the top-up is paid: topup.failed no_payment_method, no PaymentIntent', async () => {
    await customerAccount('tu_nopm', 600);
    await test.call('PUT', '/v1/accounts/tu_nopm/auto-top-up', setting);
    fake.customers.set('cus_tu_nopm', { invoice_settings: { default_payment_method: null } });
    await spend('tu_nopm', 200);
    await runner().runOnce();
    assert.deepEqual(
      (await topUps('tu_nopm')).map((row) => [row.status, row.failure_code]),
      [['failed', 'no_payment_method']],
    );
    assert.ok(!fake.requests.some((request) => request.path === '/v1/payment_intents' && request.idempotencyKey === 'topup:tu_nopm:1'));
    assert.deepEqual(
      (await eventsOf('tu_nopm')).map((item) => item.data.code),
      ['no_payment_method'],
    );
  });

  it(`a top-up that Stripe keeps refusing (not a decline) is retried after its lease and fails as "error" after ${topUpAttemptsMax} attempts`, async () => {
    await customerAccount('tu_refused', 600);
    await test.call('PUT', '/v1/accounts/tu_refused/auto-top-up', setting);
    await spend('tu_refused', 200);
    fake.refusal = { status: 400, body: { error: { type: 'invalid_request_error', message: 'fake refusal' } } };
    try {
      for (let attempt = 1; attempt <= topUpAttemptsMax; attempt += 1) {
        assert.deepEqual(
          (await topUps('tu_refused')).map((row) => row.status),
          ['pending'],
          `before attempt ${attempt}`,
        );
        await runner().runOnce();
        assert.equal(await runner().runOnce(), 0, 'not tried again within its lease');
        test.clock.advanceSeconds(topUpLeaseSeconds + 1);
      }
    } finally {
      fake.refusal = undefined;
    }
    const { rows } = await test.database.db.query(`select status, failure_code, attempts from top_ups where account_id = 'tu_refused'`);
    assert.deepEqual(rows, [{ status: 'failed', failure_code: 'error', attempts: topUpAttemptsMax }]);
    const failed = await eventsOf('tu_refused');
    assert.deepEqual(
      failed.map((item) => [item.type, item.data.code, item.data.failures_in_row]),
      [['topup.failed', 'error', 1]],
    );
    assert.equal(await available('tu_refused'), 400);
  });

  it('a pack price without an amount is topup.failed price_without_amount, with no PaymentIntent', async () => {
    await customerAccount('tu_noprice', 600);
    await test.call('PUT', '/v1/accounts/tu_noprice/auto-top-up', setting);
    await spend('tu_noprice', 200);
    fake.prices.set('price_pack_1000', { unit_amount: null });
    try {
      await runner().runOnce();
    } finally {
      fake.prices.delete('price_pack_1000');
    }
    assert.deepEqual(
      (await topUps('tu_noprice')).map((row) => [row.status, row.failure_code]),
      [['failed', 'price_without_amount']],
    );
    assert.ok(!fake.requests.some((request) => request.idempotencyKey === 'topup:tu_noprice:1'));
  });
});
