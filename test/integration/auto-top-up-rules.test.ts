import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { completeTopUp } from '../../src/billing/top-up-outcomes.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { fundedAccount, settleEvents, startWithFakeStripe, stopWithFakeStripe, testCatalog, type TestApp } from '../helpers/app.js';
import { deliver, event, settleWebhooks } from '../helpers/stripe-events.js';

// The rules of SPEC "auto top-up" that issue 19 found broken: one PaymentIntent per top-up,
// followed until it resolves however long it stays processing (Stripe forgets idempotency keys
// after 24 hours); only a spend fires one; saving the settings never charges; a failure or a pack
// that leaves the balance below the threshold does not stop the next spend from trying again;
// a flagged account is never charged off-session.
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
const hourSeconds = 3600;
const daySeconds = 24 * hourSeconds;
let keys = 0;
const spend = async (accountId: string, amount: number) => {
  const answer = await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount, idempotency_key: `tr-${(keys += 1)}` });
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
};
const hold = async (accountId: string, amount: number) => {
  const answer = await test.call('POST', `/v1/accounts/${accountId}/holds`, { amount, idempotency_key: `tr-${(keys += 1)}` });
  assert.equal(answer.status, 201, JSON.stringify(answer.body));
};
const runner = () => {
  const topUps = test.parts.topUps;
  assert.ok(topUps !== undefined);
  return topUps;
};
const saveSetting = async (accountId: string, body: Record<string, unknown>) => {
  const answer = await test.call('PUT', `/v1/accounts/${accountId}/auto-top-up`, body);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
};

async function customerAccount(accountId: string, credits: number): Promise<void> {
  await fundedAccount(test, accountId, credits);
  const customer = `cus_${accountId}`;
  await test.database.db.query('update accounts set stripe_customer_id = $2 where id = $1', [accountId, customer]);
  fake.customers.set(customer, { invoice_settings: { default_payment_method: 'pm_card_visa' } });
}

interface TopUpRow {
  id: string;
  status: string;
  payment_intent: string | null;
  failure_code: string | null;
}

async function topUps(accountId: string): Promise<TopUpRow[]> {
  return (
    await test.database.db.query<TopUpRow>(
      'select id, status, payment_intent, failure_code from top_ups where account_id = $1 order by id',
      [accountId],
    )
  ).rows;
}

async function eventsOf(accountId: string, prefix = 'topup.'): Promise<any[]> {
  await settleEvents(test);
  const answer = await test.call('GET', `/v1/events?account_id=${accountId}&limit=500`);
  return answer.body.events.filter((item: any) => item.type.startsWith(prefix));
}

const available = async (accountId: string): Promise<number> =>
  (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available;

/** Every create of a PaymentIntent Tally sent for an account, whatever its key. */
const createRequests = (accountId: string) =>
  fake.requests.filter(
    (request) =>
      request.method === 'POST' && request.path === '/v1/payment_intents' && request.params['metadata[tally_account_id]'] === accountId,
  );

const purchaseGrants = async (accountId: string): Promise<number> =>
  (
    await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from grants where account_id = $1 and source = 'purchase'`,
      [accountId],
    )
  ).rows[0]?.count ?? -1;

/** Runs the payer job once an hour of the test clock, for `hours` hours. */
async function runHourly(hours: number): Promise<void> {
  for (let hour = 0; hour < hours; hour += 1) {
    test.clock.advanceSeconds(hourSeconds);
    await runner().runOnce();
  }
}

/** An account whose top-up is `processing` at Stripe (a SEPA debit): answers its PaymentIntent. */
async function processingTopUp(accountId: string): Promise<string> {
  await customerAccount(accountId, 600);
  await saveSetting(accountId, setting);
  await spend(accountId, 200);
  fake.paymentIntentOutcome = 'processing';
  try {
    await runner().runOnce();
  } finally {
    fake.paymentIntentOutcome = 'succeeded';
  }
  const [row] = await topUps(accountId);
  assert.equal(row?.status, 'pending');
  assert.ok(row?.payment_intent);
  return row.payment_intent;
}

describe('one PaymentIntent per top-up, followed until it resolves', () => {
  it('a top-up processing for 30 hours is created once, never sent again after Stripe forgot its key, and granted once when it succeeds days later', async () => {
    const paymentIntent = await processingTopUp('tr_sepa');
    fake.paymentIntentOutcome = 'processing';
    try {
      await runHourly(30);
    } finally {
      fake.paymentIntentOutcome = 'succeeded';
    }
    assert.equal(createRequests('tr_sepa').length, 1, 'one create, never repeated');
    assert.deepEqual(
      (await topUps('tr_sepa')).map((row) => [row.status, row.payment_intent]),
      [['pending', paymentIntent]],
    );
    test.clock.advanceSeconds(3 * daySeconds);
    const settled = fake.settlePaymentIntent(paymentIntent, 'succeeded');
    await runHourly(2); // the job follows it by retrieving it
    assert.equal(await available('tr_sepa'), 400 + 1000);
    assert.equal((await deliver(test, event('payment_intent.succeeded', settled))).status, 200);
    await settleWebhooks(test);
    await runHourly(2);
    assert.equal(await available('tr_sepa'), 400 + 1000, 'the webhook after the job changes nothing');
    assert.equal(await purchaseGrants('tr_sepa'), 1);
    assert.equal(createRequests('tr_sepa').length, 1);
    assert.deepEqual(
      (await eventsOf('tr_sepa')).map((item) => [item.type, item.data.payment_intent]),
      [['topup.succeeded', paymentIntent]],
    );
  });

  it('a processing top-up that fails days later is topup.failed once, by the webhook or by retrieving it; nothing is granted and the next spend tries again', async () => {
    for (const via of ['webhook', 'retrieve'] as const) {
      const accountId = `tr_sepa_fail_${via}`;
      const paymentIntent = await processingTopUp(accountId);
      test.clock.advanceSeconds(4 * daySeconds);
      const settled = fake.settlePaymentIntent(paymentIntent, 'failed');
      if (via === 'webhook') {
        assert.equal((await deliver(test, event('payment_intent.payment_failed', settled))).status, 200);
        await settleWebhooks(test);
      }
      await runHourly(2);
      assert.deepEqual(
        (await topUps(accountId)).map((row) => [row.status, row.failure_code]),
        [['failed', 'debit_not_authorized']],
        via,
      );
      assert.equal(createRequests(accountId).length, 1, via);
      assert.equal(await available(accountId), 400, via);
      await spend(accountId, 10); // already below the threshold: a qualifying spend
      await runner().runOnce();
      assert.deepEqual(
        (await topUps(accountId)).map((row) => row.status),
        ['failed', 'succeeded'],
        via,
      );
      assert.equal(await available(accountId), 390 + 1000, via);
      assert.deepEqual(
        (await eventsOf(accountId)).map((item) => [item.type, item.data.failures_in_row ?? null]),
        [
          ['topup.failed', 1],
          ['topup.succeeded', null],
        ],
        via,
      );
    }
  });

  it("grants only the top-up's own PaymentIntent: a success of another one naming the top-up is ignored, by the webhook and by the grant step", async () => {
    const paymentIntent = await processingTopUp('tr_other');
    const other = { ...fake.paymentIntents.get(paymentIntent), id: 'pi_not_the_top_ups', status: 'succeeded', amount_received: 1000 };
    const foreign = event('payment_intent.succeeded', other);
    assert.equal((await deliver(test, foreign)).status, 200);
    await settleWebhooks(test);
    const { rows } = await test.database.db.query<{ status: string }>('select status from webhook_events where id = $1', [foreign.id]);
    assert.equal(rows[0]?.status, 'ignored');
    const [row] = await topUps('tr_other');
    const granted = await test.database.db.withTransaction((client) =>
      completeTopUp(client, testCatalog(), {
        accountId: 'tr_other',
        topUpId: Number(row?.id),
        paymentIntent: 'pi_not_the_top_ups_either',
        amount: 1000,
        currency: 'usd',
        now: test.clock.now(),
      }),
    );
    assert.equal(granted, false);
    assert.equal(await available('tr_other'), 400);
    assert.equal(await purchaseGrants('tr_other'), 0);
    // Its own PaymentIntent still grants once, after all that.
    assert.equal(
      (await deliver(test, event('payment_intent.succeeded', fake.settlePaymentIntent(paymentIntent, 'succeeded')))).status,
      200,
    );
    await settleWebhooks(test);
    assert.equal(await available('tr_other'), 1400);
    assert.deepEqual(
      (await topUps('tr_other')).map((row) => [row.status, row.payment_intent]),
      [['succeeded', paymentIntent]],
    );
  });
});

describe('only a spend fires a top-up', () => {
  it('a grant expiring, a clawback and an admin adjustment that take the balance below the threshold start nothing; the next spend does', async () => {
    await customerAccount('tr_expiry', 200);
    await fundedAccount(test, 'tr_expiry', 400, { expires_at: new Date(test.clock.now().getTime() + hourSeconds * 1000).toISOString() });
    await customerAccount('tr_clawback', 600);
    await customerAccount('tr_adjusted', 600);
    for (const accountId of ['tr_expiry', 'tr_clawback', 'tr_adjusted']) await saveSetting(accountId, setting);

    test.clock.advanceSeconds(2 * hourSeconds);
    await test.parts.sweeper.sweep();
    await test.database.db.query(`select tally_clawback('tr_clawback', 300, 'refund:re_tr_clawback', null, '{}', $1)`, [test.clock.now()]);
    const adjusted = await test.admin('POST', '/v1/accounts/tr_adjusted/adjustments', {
      amount: -300,
      reason: 'correction',
      idempotency_key: 'tr-adjust',
    });
    assert.equal(adjusted.status, 201);
    for (const accountId of ['tr_expiry', 'tr_clawback', 'tr_adjusted']) {
      assert.ok((await available(accountId)) < setting.threshold, accountId);
      assert.deepEqual(await topUps(accountId), [], accountId);
      // balance.low still says the balance crossed the threshold: it reports any fall.
      assert.deepEqual(
        (await eventsOf(accountId, 'balance.low')).map((item) => item.data.threshold),
        [500],
        accountId,
      );
    }
    await runner().runOnce();
    for (const accountId of ['tr_expiry', 'tr_clawback', 'tr_adjusted']) assert.equal(createRequests(accountId).length, 0, accountId);

    await spend('tr_expiry', 10); // a usage made while below
    await hold('tr_clawback', 10); // a hold made while below
    await runner().runOnce();
    assert.deepEqual(
      (await topUps('tr_expiry')).map((row) => row.status),
      ['succeeded'],
    );
    assert.deepEqual(
      (await topUps('tr_clawback')).map((row) => row.status),
      ['succeeded'],
    );
    assert.deepEqual(await topUps('tr_adjusted'), []);
  });

  it('spends in one usage batch that leave the balance below the threshold start one top-up', async () => {
    await customerAccount('tr_batch', 600);
    await saveSetting('tr_batch', setting);
    const events = Array.from({ length: 5 }, (_, index) => ({ account_id: 'tr_batch', amount: 50, idempotency_key: `tr-batch-${index}` }));
    const answer = await test.call('POST', '/v1/usage/batch', { events });
    assert.equal(answer.status, 200);
    assert.deepEqual(
      (await topUps('tr_batch')).map((row) => row.status),
      ['pending'],
    );
  });

  it('a flagged account (a dispute) is never charged off-session until the flag is cleared', async () => {
    await customerAccount('tr_flagged', 600);
    await saveSetting('tr_flagged', setting);
    await spend('tr_flagged', 200); // requested before the flag
    await test.database.db.query(`update accounts set flagged = true where id = 'tr_flagged'`);
    await runner().runOnce();
    await spend('tr_flagged', 10);
    await runner().runOnce();
    assert.equal(createRequests('tr_flagged').length, 0);
    assert.deepEqual(
      (await topUps('tr_flagged')).map((row) => row.status),
      ['cancelled'],
    );
    await test.database.db.query(`update accounts set flagged = false where id = 'tr_flagged'`);
    await spend('tr_flagged', 10);
    await runner().runOnce();
    assert.equal(createRequests('tr_flagged').length, 1);
    assert.equal(await available('tr_flagged'), 380 + 1000);
  });
});

describe('saving the settings never charges', () => {
  it('twelve saves with enabled: true below the threshold start no top-up and no PaymentIntent', async () => {
    await customerAccount('tr_saves', 100);
    for (let save = 0; save < 12; save += 1) {
      await saveSetting('tr_saves', { ...setting, threshold: 500 + save });
      await runner().runOnce();
    }
    assert.deepEqual(await topUps('tr_saves'), []);
    assert.equal(createRequests('tr_saves').length, 0);
    assert.equal(await available('tr_saves'), 100);
  });

  it('turning it off and on while a payment is in flight starts no second one with max_per_month 1, and the first still grants', async () => {
    await customerAccount('tr_toggle', 600);
    const once = { ...setting, max_per_month: 1 };
    await saveSetting('tr_toggle', once);
    await spend('tr_toggle', 200);
    let open: () => void = () => {};
    fake.paymentIntentGate = new Promise((resolve) => (open = resolve));
    const paying = runner().runOnce();
    try {
      const deadline = Date.now() + 5000;
      while (createRequests('tr_toggle').length === 0) {
        assert.ok(Date.now() < deadline, 'the job sent the create');
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      await saveSetting('tr_toggle', { ...once, enabled: false });
      await saveSetting('tr_toggle', once);
    } finally {
      open();
      fake.paymentIntentGate = undefined;
    }
    await paying;
    await spend('tr_toggle', 1000); // 1400 → 400: crosses again, but the month's one is used
    await runner().runOnce();
    assert.equal(createRequests('tr_toggle').length, 1);
    assert.deepEqual(
      (await topUps('tr_toggle')).map((row) => row.status),
      ['succeeded'],
    );
    assert.equal(await available('tr_toggle'), 400);
  });

  it('a top-up in flight when auto top-up is turned off still grants what it charged', async () => {
    const paymentIntent = await processingTopUp('tr_off');
    await saveSetting('tr_off', { ...setting, enabled: false });
    fake.settlePaymentIntent(paymentIntent, 'succeeded');
    await runHourly(2);
    assert.equal(await available('tr_off'), 1400);
  });

  it('a top-up requested but not yet sent when auto top-up is turned off is cancelled without a PaymentIntent', async () => {
    await customerAccount('tr_off_early', 600);
    await saveSetting('tr_off_early', setting);
    await spend('tr_off_early', 200);
    await saveSetting('tr_off_early', { ...setting, enabled: false });
    await runner().runOnce();
    assert.deepEqual(
      (await topUps('tr_off_early')).map((row) => row.status),
      ['cancelled'],
    );
    assert.equal(createRequests('tr_off_early').length, 0);
  });
});

describe('after a failure, the next qualifying spend tries again', () => {
  it('three declines in a row on spends made below the threshold turn auto top-up off with an event; later spends start nothing', async () => {
    await customerAccount('tr_declines', 600);
    await saveSetting('tr_declines', setting);
    fake.paymentIntentOutcome = 'declined';
    try {
      for (let round = 0; round < 4; round += 1) {
        await spend('tr_declines', round === 0 ? 200 : 10);
        await runner().runOnce();
      }
    } finally {
      fake.paymentIntentOutcome = 'succeeded';
    }
    const failed = await eventsOf('tr_declines');
    assert.deepEqual(
      failed.map((item) => [item.data.code, item.data.failures_in_row, item.data.auto_top_up_disabled]),
      [
        ['card_declined', 1, false],
        ['card_declined', 2, false],
        ['card_declined', 3, true],
      ],
    );
    assert.equal(createRequests('tr_declines').length, 3);
  });

  it('a pack that leaves the balance below the threshold: the next spend buys another', async () => {
    await customerAccount('tr_small_pack', 6000);
    await saveSetting('tr_small_pack', { ...setting, threshold: 5000 });
    await spend('tr_small_pack', 3000); // 3000, below 5000
    await runner().runOnce(); // 4000, still below
    await spend('tr_small_pack', 100); // 3900: qualifies
    await runner().runOnce();
    assert.equal(await available('tr_small_pack'), 4900);
    assert.deepEqual(
      (await topUps('tr_small_pack')).map((row) => row.status),
      ['succeeded', 'succeeded'],
    );
  });
});
