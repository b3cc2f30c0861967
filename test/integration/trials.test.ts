import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { deliver, event, invoice, month, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

let test: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;
const trialEnd = t0 + 7 * 86400;

before(async () => {
  fake = await new FakeStripe().start();
  test = await createTestApp({ stripeApiBase: fake.url, poolSize: 40 });
});
after(async () => {
  await test.close();
  await fake.stop();
});

async function person(fields: { email?: string; device_fingerprint?: string } = {}) {
  const accountId = uniqueId('acct');
  const created = await test.call('PUT', `/v1/accounts/${accountId}`, fields);
  assert.equal(created.status, 200);
  return { accountId, customer: uniqueId('cus'), subscriptionId: uniqueId('sub') };
}

const trialing = (who: { accountId: string; customer: string; subscriptionId: string }, paymentMethod?: string) =>
  event(
    'customer.subscription.created',
    subscription({
      id: who.subscriptionId,
      customer: who.customer,
      status: 'trialing',
      price: 'price_plus_monthly',
      start: t0,
      end: trialEnd,
      trialEnd,
      accountId: who.accountId,
      defaultPaymentMethod: paymentMethod ?? null,
    }),
  );

const trialGrants = async (accountId: string) =>
  (
    await test.database.db.query<{ amount: number; expires_at: Date }>(
      `select amount, expires_at from grants where account_id = $1 and source = 'trial'`,
      [accountId],
    )
  ).rows;
const cancelled = (subscriptionId: string) =>
  fake.requests.filter((request) => request.method === 'DELETE' && request.path === `/v1/subscriptions/${subscriptionId}`);

describe('trials', () => {
  it("grants the plan's trial credits, expiring at the trial end, once", async () => {
    const jane = await person({ email: 'someone@example.com' });
    await deliver(test, trialing(jane));
    await deliver(test, event('customer.subscription.updated', trialing(jane).data.object));
    await settleWebhooks(test);
    const grants = await trialGrants(jane.accountId);
    assert.equal(grants.length, 1);
    assert.equal(grants[0]?.amount, 500);
    assert.equal(grants[0]?.expires_at.getTime(), trialEnd * 1000);
    const account = await test.call('GET', `/v1/accounts/${jane.accountId}`);
    assert.equal(account.body.trial.credits, 500);
    assert.equal(account.body.subscription.status, 'trialing');
  });

  it('gives one trial to Jane.Doe+x@GMail.com and janedoe@googlemail.com, refusing and cancelling the second', async () => {
    const first = await person({ email: 'Jane.Doe+x@GMail.com' });
    const second = await person({ email: 'janedoe@googlemail.com' });
    await deliver(test, trialing(first));
    await settleWebhooks(test);
    await deliver(test, trialing(second));
    await settleWebhooks(test);
    assert.equal((await trialGrants(first.accountId)).length, 1);
    assert.equal((await trialGrants(second.accountId)).length, 0);
    const refusal = await test.database.db.query<{ reason: string; cancelled_at: Date | null }>(
      'select reason, cancelled_at from trial_refusals where subscription_id = $1',
      [second.subscriptionId],
    );
    assert.equal(refusal.rows[0]?.reason, 'email_had_trial');
    assert.ok(refusal.rows[0]?.cancelled_at, 'the subscription was cancelled');
    const requests = cancelled(second.subscriptionId);
    assert.equal(requests.length, 1);
    assert.equal(requests[0]?.idempotencyKey, `cancel-trial:${second.subscriptionId}`);
    const alerts = await test.database.db.query('select 1 from alerts where alert_key = $1', [`trial_refused:${second.subscriptionId}`]);
    assert.equal(alerts.rowCount, 1);
  });

  it('refuses a second trial on the same card, fetching its fingerprint through the Stripe API', async () => {
    fake.cardFingerprints.set('pm_card_a', 'fp_shared_card');
    fake.cardFingerprints.set('pm_card_b', 'fp_shared_card');
    const first = await person({ email: `${uniqueId('a')}@example.com` });
    const second = await person({ email: `${uniqueId('b')}@example.com` });
    await deliver(test, trialing(first, 'pm_card_a'));
    await settleWebhooks(test);
    await deliver(test, trialing(second, 'pm_card_b'));
    await settleWebhooks(test);
    assert.equal((await trialGrants(first.accountId)).length, 1);
    assert.equal((await trialGrants(second.accountId)).length, 0);
    const refusal = await test.database.db.query<{ reason: string }>('select reason from trial_refusals where subscription_id = $1', [
      second.subscriptionId,
    ]);
    assert.equal(refusal.rows[0]?.reason, 'card_had_trial');
    assert.equal(cancelled(second.subscriptionId).length, 1);
    const claims = await test.database.db.query<{ value_hash: string }>(`select value_hash from trial_claims where kind = 'card'`);
    assert.ok(
      claims.rows.every((row) => !row.value_hash.includes('fp_shared_card')),
      'claims hold hashes, never the raw fingerprint',
    );
  });

  it('gives exactly one trial when one person starts trials on 20 accounts at once', async () => {
    const people = await Promise.all(Array.from({ length: 20 }, () => person({ email: 'racer@example.com' })));
    const events = people.map((who) => trialing(who));
    for (const stripeEvent of events) await deliver(test, stripeEvent);
    await Promise.all(events.map((stripeEvent) => test.parts.worker.processOne(String(stripeEvent.id))));
    await settleWebhooks(test);
    const granted = await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from grants where source = 'trial' and account_id = any($1)`,
      [people.map((who) => who.accountId)],
    );
    assert.equal(granted.rows[0]?.count, 1);
    const refused = await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from trial_refusals where account_id = any($1)`,
      [people.map((who) => who.accountId)],
    );
    assert.equal(refused.rows[0]?.count, 19);
  });

  it('answers eligibility before and after, by account, email and device, creating nothing', async () => {
    const device = uniqueId('device');
    const first = await person({ email: 'eligible.person@example.com', device_fingerprint: device });
    const second = await person({});
    const claimsBefore = (await test.database.db.query('select 1 from trial_claims')).rowCount;
    const before = await test.call('GET', `/v1/accounts/${first.accountId}/trial-eligibility`);
    assert.deepEqual(before.body, { eligible: true });
    assert.equal((await test.database.db.query('select 1 from trial_claims')).rowCount, claimsBefore, 'asking creates nothing');
    await deliver(test, trialing(first));
    await settleWebhooks(test);
    assert.deepEqual((await test.call('GET', `/v1/accounts/${first.accountId}/trial-eligibility`)).body, {
      eligible: false,
      reason: 'account_had_trial',
    });
    assert.deepEqual(
      (await test.call('GET', `/v1/accounts/${second.accountId}/trial-eligibility?email=Eligible.Person%2Bnew@example.com`)).body,
      { eligible: false, reason: 'email_had_trial' },
    );
    assert.deepEqual((await test.call('GET', `/v1/accounts/${second.accountId}/trial-eligibility?device_fingerprint=${device}`)).body, {
      eligible: false,
      reason: 'device_had_trial',
    });
    assert.deepEqual((await test.call('GET', `/v1/accounts/${second.accountId}/trial-eligibility?email=other@example.com`)).body, {
      eligible: true,
    });
    assert.equal((await test.call('GET', '/v1/accounts/nobody-at-all/trial-eligibility')).status, 404);
    const stored = await test.database.db.query<{ device_fingerprint_hash: string }>(
      'select device_fingerprint_hash from accounts where id = $1',
      [first.accountId],
    );
    assert.notEqual(stored.rows[0]?.device_fingerprint_hash, device, 'the raw fingerprint is never stored');
    await test.call('PUT', `/v1/accounts/${second.accountId}`, { device_fingerprint: device });
    const checkout = await test.call('POST', `/v1/accounts/${second.accountId}/checkout`, {
      plan_id: 'plus',
      interval: 'month',
      trial: true,
      success_url: 'https://a.test/ok',
      cancel_url: 'https://a.test/no',
    });
    assert.equal(checkout.status, 403);
    assert.equal(checkout.body.error.code, 'trial_not_eligible');
    assert.equal(checkout.body.error.reason, 'device_had_trial');
  });

  // Stripe bills a trial as a $0 invoice, paid at once, whose line covers the trial.
  const trialInvoice = (who: { accountId: string; customer: string; subscriptionId: string }) =>
    event(
      'invoice.paid',
      invoice({
        customer: who.customer,
        subscription: who.subscriptionId,
        accountId: who.accountId,
        billingReason: 'subscription_create',
        amountPaid: 0,
        lines: [{ price: 'price_plus_monthly', start: t0, end: trialEnd, amount: 0 }],
      }),
    );
  const grantsOf = async (accountId: string) =>
    (
      await test.database.db.query<{ source: string; amount: number }>(
        'select source, amount from grants where account_id = $1 order by source',
        [accountId],
      )
    ).rows;

  it("grants only the trial for the trial's $0 invoice, whichever arrives first, asking Stripe when it must", async () => {
    for (const order of ['subscription first', 'invoice first'] as const) {
      const who = await person({ email: `${uniqueId('zero')}@example.com` });
      fake.subscriptions.set(who.subscriptionId, { status: 'trialing', trial_end: trialEnd });
      const events = order === 'subscription first' ? [trialing(who), trialInvoice(who)] : [trialInvoice(who), trialing(who)];
      for (const stripeEvent of events) {
        await deliver(test, stripeEvent);
        await settleWebhooks(test);
      }
      assert.deepEqual(await grantsOf(who.accountId), [{ source: 'trial', amount: 500 }], order);
      const asked = fake.requests.filter(
        (request) => request.method === 'GET' && request.path === `/v1/subscriptions/${who.subscriptionId}`,
      );
      assert.equal(asked.length, order === 'invoice first' ? 1 : 0, 'Stripe is asked only when the subscription event has not come yet');
    }
  });

  it("grants nothing for the trial's $0 invoice applied after the trial was ended early", async () => {
    const who = await person({ email: `${uniqueId('early')}@example.com` });
    const endedEarly = t0 + 86400;
    await deliver(test, trialing(who));
    await settleWebhooks(test);
    await deliver(
      test,
      event(
        'customer.subscription.updated',
        subscription({
          id: who.subscriptionId,
          customer: who.customer,
          status: 'active',
          price: 'price_plus_monthly',
          start: endedEarly,
          end: endedEarly + month,
          trialEnd: endedEarly,
          accountId: who.accountId,
        }),
      ),
    );
    await settleWebhooks(test);
    await deliver(test, trialInvoice(who));
    await settleWebhooks(test);
    assert.deepEqual(await grantsOf(who.accountId), [{ source: 'trial', amount: 500 }]);
  });

  it('gives a refused trial nothing, not even through its $0 invoice', async () => {
    const email = `${uniqueId('twice')}@example.com`;
    const first = await person({ email });
    await deliver(test, trialing(first));
    await settleWebhooks(test);
    const second = await person({ email });
    await deliver(test, trialing(second));
    await deliver(test, trialInvoice(second));
    await settleWebhooks(test);
    assert.deepEqual(await grantsOf(second.accountId), []);
    assert.equal(cancelled(second.subscriptionId).length, 1);
  });

  it('grants a $0 plan line outside any trial as a period (a free plan)', async () => {
    const who = await person();
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({
          id: who.subscriptionId,
          customer: who.customer,
          status: 'active',
          price: 'price_plus_monthly',
          start: t0,
          end: t0 + month,
          accountId: who.accountId,
        }),
      ),
    );
    await deliver(
      test,
      event(
        'invoice.paid',
        invoice({
          customer: who.customer,
          subscription: who.subscriptionId,
          accountId: who.accountId,
          amountPaid: 0,
          lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month, amount: 0 }],
        }),
      ),
    );
    await settleWebhooks(test);
    assert.deepEqual(await grantsOf(who.accountId), [{ source: 'subscription', amount: 4000 }]);
  });

  it('grants the trial and one period when the trial converts, in any order of events', async () => {
    for (const order of ['trial first', 'invoice first'] as const) {
      const who = await person({ email: `${uniqueId('convert')}@example.com` });
      fake.subscriptions.set(who.subscriptionId, { status: 'trialing', trial_end: trialEnd });
      const paid = event(
        'invoice.paid',
        invoice({
          customer: who.customer,
          subscription: who.subscriptionId,
          accountId: who.accountId,
          billingReason: 'subscription_cycle',
          lines: [{ price: 'price_plus_monthly', start: trialEnd, end: trialEnd + month }],
        }),
      );
      const events = order === 'trial first' ? [trialing(who), trialInvoice(who), paid] : [paid, trialInvoice(who), trialing(who)];
      for (const stripeEvent of events) {
        await deliver(test, stripeEvent);
        await settleWebhooks(test);
      }
      await deliver(
        test,
        event(
          'customer.subscription.updated',
          subscription({
            id: who.subscriptionId,
            customer: who.customer,
            status: 'active',
            price: 'price_plus_monthly',
            start: trialEnd,
            end: trialEnd + month,
            accountId: who.accountId,
          }),
        ),
      );
      await settleWebhooks(test);
      const grants = await test.database.db.query<{ source: string; amount: number }>(
        'select source, amount from grants where account_id = $1 order by source',
        [who.accountId],
      );
      assert.deepEqual(
        grants.rows,
        [
          { source: 'subscription', amount: 4000 },
          { source: 'trial', amount: 500 },
        ],
        order,
      );
    }
  });
});
