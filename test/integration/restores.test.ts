import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { fundedAccount, ledgerFacts, type TestApp, startWithFakeStripe, stopWithFakeStripe } from '../helpers/app.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import {
  checkoutSession,
  deliver,
  dispute,
  event,
  invoice,
  invoicePayment,
  month,
  refund,
  settleWebhooks,
  uniqueId,
} from '../helpers/stripe-events.js';

// Restores (a refund that failed or was cancelled, a dispute won) give credits back to the
// grants their clawback took them from, keeping those grants' expiry; credits whose grant has
// expired meanwhile expire at once; debt is repaid first. They never mint new credits that
// outlive the grants they came from (a never-expiring `purchase` grant, as before).
let test: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => ({ test, fake } = await startWithFakeStripe()));
after(() => stopWithFakeStripe(test, fake));

const grantsOf = async (accountId: string) =>
  (
    await test.database.db.query<{ source: string; amount: number; remaining: number; expires_at: Date | null }>(
      'select source, amount, remaining, expires_at from grants where account_id = $1 order by id',
      [accountId],
    )
  ).rows;
const balance = async (accountId: string) => (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;
const entriesOf = async (accountId: string, kinds: string[]) =>
  (
    await test.database.db.query<{ kind: string; amount: number }>(
      `select kind, amount from entries where account_id = $1 and kind = any($2) order by id`,
      [accountId, kinds],
    )
  ).rows;

async function assertReconciled(accountId: string): Promise<void> {
  const facts = await ledgerFacts(test, accountId);
  assert.equal(facts.available - facts.debt, facts.entry_sum, 'available - debt equals the sum of entries');
  assert.equal(facts.available, facts.grant_sum, 'available equals the sum of grants remaining');
}

/** An account on Plus monthly with the period [t0, t0 + month) paid (4000 credits) by a known payment intent. */
async function paidSubscriber(): Promise<{ accountId: string; paymentIntent: string }> {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  const paymentIntent = uniqueId('pi');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
  );
  const paid = invoice({
    customer,
    subscription: subscriptionId,
    lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
    amountPaid: 2000,
  });
  await deliver(test, event('invoice.paid', paid));
  await deliver(test, event('invoice_payment.paid', invoicePayment({ invoice: String(paid.id), paymentIntent, amount: 2000 })));
  await settleWebhooks(test);
  assert.equal((await balance(accountId)).available, 4000);
  return { accountId, paymentIntent };
}

describe('restores', () => {
  it('gives a failed refund back to the period grant it came from, which then expires with its period', async () => {
    const { accountId, paymentIntent } = await paidSubscriber();
    const pending = refund({ amount: 1000, paymentIntent, status: 'pending' });
    await deliver(test, event('refund.created', pending));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 2000, 'half the payment, half the credits');
    await deliver(test, event('refund.updated', { ...pending, status: 'failed' }));
    await deliver(test, event('refund.updated', { ...pending, status: 'failed' }));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 4000);
    const grants = await grantsOf(accountId);
    assert.equal(grants.length, 1, 'no new grant: the credits went back where they came from');
    assert.equal(grants[0]?.remaining, 4000);
    assert.deepEqual(await entriesOf(accountId, ['clawback', 'restore']), [
      { kind: 'clawback', amount: -2000 },
      { kind: 'restore', amount: 2000 },
    ]);
    test.clock.advanceSeconds(month);
    assert.equal((await balance(accountId)).available, 0, 'restored credits end with their period');
    await assertReconciled(accountId);
    test.clock.advanceSeconds(-month);
  });

  it('expires at once what a won dispute restores to a grant that has expired meanwhile', async () => {
    const { accountId, paymentIntent } = await paidSubscriber();
    const opened = dispute({ amount: 2000, paymentIntent });
    await deliver(test, event('charge.dispute.created', opened));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 0);
    test.clock.advanceSeconds(month + 1);
    try {
      await deliver(test, event('charge.dispute.closed', { ...opened, status: 'won' }));
      await settleWebhooks(test);
      assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 0 });
      assert.deepEqual(await entriesOf(accountId, ['restore', 'expire']), [
        { kind: 'restore', amount: 4000 },
        { kind: 'expire', amount: -4000 },
      ]);
      assert.equal((await grantsOf(accountId)).length, 1);
      await assertReconciled(accountId);
    } finally {
      test.clock.advanceSeconds(-(month + 1));
    }
  });

  it('repays the debt a clawback created first, then gives the rest back to the grant it came from', async () => {
    const accountId = uniqueId('acct');
    const paymentIntent = uniqueId('pi');
    await fundedAccount(test, accountId, 0);
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000', amountTotal: 1000 }),
      ),
    );
    await settleWebhooks(test);
    await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 900, idempotency_key: uniqueId('use') });
    const pending = refund({ amount: 1000, paymentIntent, status: 'pending' });
    await deliver(test, event('refund.created', pending));
    await settleWebhooks(test);
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 900 });
    await deliver(test, event('refund.updated', { ...pending, status: 'canceled' }));
    await settleWebhooks(test);
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 100, held: 0, debt: 0 });
    const grants = await grantsOf(accountId);
    assert.deepEqual(
      grants.map((grant) => [grant.source, grant.amount, grant.remaining, grant.expires_at]),
      [['purchase', 1000, 100, null]],
    );
    await assertReconciled(accountId);
  });

  it('gives back debt that later credits repaid in the meantime, and nothing more', async () => {
    const accountId = uniqueId('acct');
    const paymentIntent = uniqueId('pi');
    await fundedAccount(test, accountId, 0);
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000', amountTotal: 1000 }),
      ),
    );
    await settleWebhooks(test);
    await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 900, idempotency_key: uniqueId('use') });
    const pending = refund({ amount: 1000, paymentIntent, status: 'pending' });
    await deliver(test, event('refund.created', pending));
    await settleWebhooks(test);
    await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
      amount: 1000,
      source: 'promo',
      reason: 'goodwill',
      idempotency_key: uniqueId('g'),
    });
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 100, held: 0, debt: 0 });
    await deliver(test, event('refund.updated', { ...pending, status: 'failed' }));
    await settleWebhooks(test);
    // 1000 bought - 900 spent + 1000 granted: the refund that failed takes nothing in the end.
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 1100, held: 0, debt: 0 });
    await assertReconciled(accountId);
  });

  it('leaves nothing for reconciliation to find', async () => {
    const report = await test.admin('POST', '/v1/admin/reconcile', {});
    assert.equal(report.status, 200);
    assert.deepEqual(report.body.findings, []);
  });
});
