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
  subscription,
  uniqueId,
} from '../helpers/stripe-events.js';

/**
 * Issue 8 item 11: an inquiry claws nothing back and a prevented dispute ends like a won one; a
 * refund of any of an invoice's several payments finds it; same-second subscription events keep
 * the newer state by Stripe's lifecycle, not by the random event id; reconciliation does not
 * report a refund whose proportional clawback is 0 as missing.
 */
let test: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => ({ test, fake } = await startWithFakeStripe()));
after(() => stopWithFakeStripe(test, fake));

const db = () => test.database.db;

async function packBuyer(amountTotal = 1000) {
  const accountId = uniqueId('acct');
  const paymentIntent = uniqueId('pi');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000', amountTotal }),
    ),
  );
  await settleWebhooks(test);
  assert.equal((await ledgerFacts(test, accountId)).available, 1000);
  return { accountId, paymentIntent };
}

const flagged = async (accountId: string) =>
  (await db().query<{ flagged: boolean }>('select flagged from accounts where id = $1', [accountId])).rows[0]?.flagged;

describe('disputes', () => {
  it('claws nothing back for an inquiry, nor when it closes', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const inquiry = dispute({ amount: 1000, paymentIntent, status: 'warning_needs_response' });
    await deliver(test, event('charge.dispute.created', inquiry));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 1000, 'Stripe withdrew nothing for an inquiry');
    assert.equal(await flagged(accountId), false);
    await deliver(test, event('charge.dispute.closed', { ...inquiry, status: 'warning_closed' }));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 1000);
  });

  it('claws back when an inquiry escalates to a chargeback (charge.dispute.updated)', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const inquiry = dispute({ amount: 1000, paymentIntent, status: 'warning_needs_response' });
    await deliver(test, event('charge.dispute.created', inquiry));
    await deliver(test, event('charge.dispute.updated', { ...inquiry, status: 'needs_response' }));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 0);
    assert.equal(await flagged(accountId), true);
  });

  it('restores the credits of a prevented dispute, as for a won one', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const chargeback = dispute({ amount: 1000, paymentIntent });
    await deliver(test, event('charge.dispute.created', chargeback));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 0);
    await deliver(test, event('charge.dispute.closed', { ...chargeback, status: 'prevented' }));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 1000);
  });
});

describe('an invoice paid by several payments', () => {
  it('claws back a refund of the second payment intent', async () => {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(test, accountId, 0);
    const paid = invoice({
      customer,
      subscription: subscriptionId,
      accountId,
      amountPaid: 1000,
      lines: [{ price: 'price_starter_monthly', start: t0, end: t0 + month }],
    });
    const [first, second] = [uniqueId('pi'), uniqueId('pi')];
    await deliver(test, event('invoice.paid', paid));
    await deliver(test, event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent: first, amount: 600 })));
    await deliver(test, event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent: second, amount: 400 })));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, accountId)).available, 1000);
    const refunded = event('refund.created', refund({ amount: 400, paymentIntent: second }));
    await deliver(test, refunded);
    await settleWebhooks(test);
    const row = await db().query<{ status: string }>('select status from webhook_events where id = $1', [refunded.id]);
    assert.equal(row.rows[0]?.status, 'processed');
    assert.equal((await ledgerFacts(test, accountId)).available, 600, 'floor(1000 × 400 / 1000) clawed back');
  });
});

describe('subscription events within one second', () => {
  it('keeps the later period and the later status, whatever their event ids', async () => {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(test, accountId, 0);
    const created = 1_900_000_000;
    const state = (status: string, start: number) =>
      subscription({ id: subscriptionId, customer, status, price: 'price_plus_monthly', start, end: start + month, accountId });
    // Event ids are random: here the older state has the larger id, which today's order prefers.
    const renewed = event('customer.subscription.updated', state('active', t0 + month), { id: 'evt_aaa_renewed', created });
    const older = event('customer.subscription.updated', state('active', t0), { id: 'evt_zzz_older', created });
    await deliver(test, renewed);
    await settleWebhooks(test);
    await deliver(test, older);
    await settleWebhooks(test);
    const period = await db().query<{ start: number }>(
      'select extract(epoch from current_period_start)::bigint as start from subscriptions where id = $1',
      [subscriptionId],
    );
    assert.equal(Number(period.rows[0]?.start), t0 + month);
    const cancelled = event('customer.subscription.deleted', state('canceled', t0 + month), {
      id: 'evt_aab_cancelled',
      created: created + 5,
    });
    const stillActive = event('customer.subscription.updated', state('active', t0 + month), { id: 'evt_zzz_active', created: created + 5 });
    await deliver(test, cancelled);
    await settleWebhooks(test);
    await deliver(test, stillActive);
    await settleWebhooks(test);
    const status = await db().query<{ status: string }>('select status from subscriptions where id = $1', [subscriptionId]);
    assert.equal(status.rows[0]?.status, 'canceled', 'nothing follows a cancellation');
  });
});

describe('reconciliation', () => {
  it('does not report a refund whose proportional clawback is 0 as missing', async () => {
    // 1000 credits for $1000.00: a 50-cent refund claws floor(1000 × 50 / 100000) = 0 credits.
    const { paymentIntent } = await packBuyer(100_000);
    const tiny = refund({ amount: 50, paymentIntent });
    await deliver(test, event('refund.created', tiny));
    await settleWebhooks(test);
    fake.refunds.push({ ...tiny, created: Math.floor(Date.now() / 1000) });
    const response = await test.admin('POST', '/v1/admin/reconcile', { stripe: true });
    assert.equal(response.status, 200);
    const findings = (response.body.findings as { check: string; stripe_ids?: string[] }[]).filter((finding) =>
      finding.stripe_ids?.includes(tiny.id),
    );
    assert.deepEqual(findings, []);
  });
});
