import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, fundedAccount, ledgerFacts, type TestApp, startWithFakeStripe, stopWithFakeStripe } from '../helpers/app.js';
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
  signedHeader,
  subscription,
  uniqueId,
} from '../helpers/stripe-events.js';

let test: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => ({ test, fake } = await startWithFakeStripe()));
after(() => stopWithFakeStripe(test, fake));

const count = async (sql: string, values: unknown[] = []): Promise<number> =>
  (await test.database.db.query<{ count: number }>(`select count(*)::int as count from ${sql}`, values)).rows[0]?.count ?? -1;
const grantsOf = async (accountId: string) =>
  (
    await test.database.db.query<{ source: string; amount: number; remaining: number; grant_key: string; expires_at: Date | null }>(
      'select source, amount, remaining, grant_key, expires_at from grants where account_id = $1 order by id',
      [accountId],
    )
  ).rows;
const balance = async (accountId: string) => (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;

/** A subscriber: an account linked to a Stripe customer, with one monthly period paid. */
async function subscriber(price = 'price_plus_monthly') {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
  );
  await settleWebhooks(test);
  return { accountId, customer, subscriptionId, price };
}

describe('webhook intake', () => {
  it('stores a signed event and answers 200; a duplicate answers 200 and changes nothing', async () => {
    const stripeEvent = event('customer.subscription.trial_will_end', { id: 'sub_x', object: 'subscription' });
    const first = await deliver(test, stripeEvent);
    assert.equal(first.status, 200);
    assert.deepEqual(first.body, { received: true, duplicate: false });
    const second = await deliver(test, stripeEvent);
    assert.equal(second.status, 200);
    assert.equal(second.body.duplicate, true);
    assert.equal(await count('webhook_events where id = $1', [stripeEvent.id]), 1);
    await settleWebhooks(test);
    const stored = await test.database.db.query<{ status: string; api_version: string }>(
      'select status, api_version from webhook_events where id = $1',
      [stripeEvent.id],
    );
    assert.equal(stored.rows[0]?.status, 'processed');
    assert.equal(stored.rows[0]?.api_version, '2026-10-28.endive');
  });

  it('stores and applies an event whose strings hold NUL, keeping the exact body it was signed with', async () => {
    // Proves: jsonb cannot hold NUL, yet such an event (a name typed with one) is stored and
    // answered 200, its effects read the text with U+FFFD in its place, and the raw body is kept.
    // A lone UTF-16 surrogate (valid JSON, refused by jsonb) is kept the same way, in a value or a key.
    const stripeEvent = event('customer.subscription.trial_will_end', {
      id: 'sub_nul',
      object: 'subscription',
      metadata: { note: 'a\u0000b', escaped: 'c\\u0000d', lone: 'x\ud800y', 'k\udc00': 'pair \ud83d\ude00' },
    });
    const response = await deliver(test, stripeEvent);
    assert.equal(response.status, 200);
    await settleWebhooks(test);
    const stored = await test.database.db.query<{ status: string; raw_body: string; note: string; escaped: string }>(
      `select status, raw_body, payload->'data'->'object'->'metadata'->>'note' as note, payload->'data'->'object'->'metadata'->>'escaped' as escaped from webhook_events where id = $1`,
      [stripeEvent.id],
    );
    assert.equal(stored.rows[0]?.status, 'processed');
    assert.equal(stored.rows[0]?.raw_body, JSON.stringify(stripeEvent), 'the body exactly as signed');
    assert.equal(stored.rows[0]?.note, 'a\ufffdb');
    assert.equal(stored.rows[0]?.escaped, 'c\\u0000d', 'an escaped backslash before u0000 is text, left alone');
    const surrogates = await test.database.db.query<{ metadata: Record<string, string> }>(
      `select payload->'data'->'object'->'metadata' as metadata from webhook_events where id = $1`,
      [stripeEvent.id],
    );
    assert.equal(surrogates.rows[0]?.metadata.lone, 'x\ufffdy');
    assert.equal(
      surrogates.rows[0]?.metadata['k\ufffd'],
      'pair \ud83d\ude00',
      'a lone surrogate in a key is replaced; a surrogate pair is kept',
    );
  });

  it('stores and marks ignored an event type Tally has no effect for', async () => {
    const stripeEvent = event('product.created', { id: 'prod_1', object: 'product' });
    assert.equal((await deliver(test, stripeEvent)).status, 200);
    await settleWebhooks(test);
    assert.equal(await count(`webhook_events where id = $1 and status = 'ignored'`, [stripeEvent.id]), 1);
  });

  const refusals: [string, (payload: string) => string | undefined][] = [
    ['a wrong secret', (payload) => signedHeader(payload, { secret: 'whsec_wrong_secret' })],
    ['a timestamp older than 300 s', (payload) => signedHeader(payload, { timestamp: Math.floor(Date.now() / 1000) - 301 })],
    ['a timestamp more than 300 s ahead', (payload) => signedHeader(payload, { timestamp: Math.floor(Date.now() / 1000) + 400 })],
    [
      'a tampered signature',
      (payload) => signedHeader(payload).replace(/v1=(.)/, (_match, first: string) => `v1=${first === '0' ? '1' : '0'}`),
    ],
    ['no signature header', () => ''],
  ];
  for (const [name, header] of refusals) {
    it(`refuses ${name} with 400 invalid_signature and writes nothing`, async () => {
      const stripeEvent = event('invoice.paid', { id: 'in_x', object: 'invoice' });
      const payload = JSON.stringify(stripeEvent);
      const response = await test.app.inject({
        method: 'POST',
        url: '/webhooks/stripe',
        headers: { 'content-type': 'application/json', ...(header(payload) === '' ? {} : { 'stripe-signature': header(payload) }) },
        payload,
      });
      assert.equal(response.statusCode, 400);
      assert.equal(response.json().error.code, 'invalid_signature');
      assert.equal(await count('webhook_events where id = $1', [stripeEvent.id]), 0);
    });
  }

  it('refuses a signed body that changed by one byte', async () => {
    const stripeEvent = event('invoice.paid', { id: 'in_y', object: 'invoice' });
    const payload = JSON.stringify(stripeEvent);
    const header = signedHeader(payload);
    const response = await test.app.inject({
      method: 'POST',
      url: '/webhooks/stripe',
      headers: { 'content-type': 'application/json', 'stripe-signature': header },
      payload: `${payload} `,
    });
    assert.equal(response.statusCode, 400);
  });

  it('accepts an event signed with a second secret during a rotation', async () => {
    const rotated = await createTestApp({ database: test.database, stripeApiBase: fake.url });
    try {
      // The test app knows one secret; a rotated deployment lists the old and the new one.
      const { verifyWebhook } = await import('../../src/stripe/signature.js');
      const payload = JSON.stringify(event('invoice.paid', { id: 'in_z', object: 'invoice' }));
      const verified = verifyWebhook(Buffer.from(payload), signedHeader(payload, { secret: 'whsec_new' }), ['whsec_old', 'whsec_new']);
      assert.equal(verified.type, 'invoice.paid');
      assert.throws(
        () => verifyWebhook(Buffer.from(payload), signedHeader(payload, { secret: 'whsec_other' }), ['whsec_old', 'whsec_new']),
        /no configured webhook secret/,
      );
    } finally {
      await rotated.close();
    }
  });

  it('refuses a body over 1 MiB with 413', async () => {
    const stripeEvent = event('invoice.paid', { id: 'in_big', object: 'invoice', description: 'x'.repeat(1024 * 1024) });
    const payload = JSON.stringify(stripeEvent);
    const response = await test.app.inject({
      method: 'POST',
      url: '/webhooks/stripe',
      headers: { 'content-type': 'application/json', 'stripe-signature': signedHeader(payload) },
      payload,
    });
    assert.equal(response.statusCode, 413);
  });
});

describe('subscription credits', () => {
  it('grants a period once for invoice.paid and invoice.payment_succeeded, and never for subscription events', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    const paid = invoice({
      customer,
      subscription: subscriptionId,
      billingReason: 'subscription_create',
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
    });
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
      ),
    );
    await deliver(test, event('invoice.paid', paid));
    await deliver(test, event('invoice.payment_succeeded', paid));
    await settleWebhooks(test);
    const grants = await grantsOf(accountId);
    assert.equal(grants.length, 1);
    assert.equal(grants[0]?.source, 'subscription');
    assert.equal(grants[0]?.amount, 4000);
    assert.equal(grants[0]?.grant_key, `period:${subscriptionId}:si_test:${t0}`);
    assert.equal(grants[0]?.expires_at?.getTime(), (t0 + month) * 1000);
    const mirror = await test.database.db.query<{ status: string; plan_id: string; billing_interval: string }>(
      'select status, plan_id, billing_interval from subscriptions where id = $1',
      [subscriptionId],
    );
    assert.deepEqual(mirror.rows[0], { status: 'active', plan_id: 'plus', billing_interval: 'month' });
    const account = await test.call('GET', `/v1/accounts/${accountId}`);
    assert.equal(account.body.stripe_customer_id, customer);
    assert.equal(account.body.subscription.status, 'active');
  });

  it('reads every line of an invoice whose event lists only the first ones', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    const full = invoice({
      customer,
      subscription: subscriptionId,
      lines: [
        { price: 'price_unrelated', start: t0, end: t0 + month },
        { price: 'price_plus_monthly', start: t0, end: t0 + month },
      ],
    });
    fake.invoiceLines.set(full.id, full.lines.data);
    const truncated = { ...full, lines: { ...full.lines, data: full.lines.data.slice(0, 1), has_more: true } };
    await deliver(test, event('invoice.paid', truncated));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 4000, 'the plan line came from the API');
    assert.ok(fake.requests.some((request) => request.path === `/v1/invoices/${full.id}/lines`));
  });

  it('attributes an invoice that arrives before its checkout by asking Stripe for the session that created its subscription', async () => {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(test, accountId, 0);
    // Stripe holds the session before it bills the subscription it created; its event comes later.
    const session = checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId });
    fake.checkoutSessions.push(session);
    const paid = event(
      'invoice.paid',
      invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_starter_monthly', start: t0, end: t0 + month }] }),
    );
    await deliver(test, paid);
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 1000);
    const linked = await test.database.db.query<{ stripe_customer_id: string }>('select stripe_customer_id from accounts where id = $1', [
      accountId,
    ]);
    assert.equal(linked.rows[0]?.stripe_customer_id, customer, "Tally's metadata on the session links the customer");
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 1000);
  });

  it('keeps the newest subscription state whatever the order of its events', async () => {
    const { customer, subscriptionId } = await subscriber();
    const newer = event(
      'customer.subscription.updated',
      subscription({ id: subscriptionId, customer, status: 'past_due', price: 'price_plus_monthly', start: t0, end: t0 + month }),
      { created: 1_900_000_100 },
    );
    const older = event(
      'customer.subscription.created',
      subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
      { created: 1_900_000_000 },
    );
    await deliver(test, newer);
    await settleWebhooks(test);
    await deliver(test, older);
    await settleWebhooks(test);
    const mirror = await test.database.db.query<{ status: string }>('select status from subscriptions where id = $1', [subscriptionId]);
    assert.equal(mirror.rows[0]?.status, 'past_due');
  });

  it('rolls unused credits over up to the maximum, expiring the rest, in either order', async () => {
    for (const order of ['orderly', 'reversed'] as const) {
      const { accountId, customer, subscriptionId } = await subscriber();
      const first = event(
        'invoice.paid',
        invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }] }),
      );
      const renewal = event(
        'invoice.paid',
        invoice({
          customer,
          subscription: subscriptionId,
          lines: [{ price: 'price_plus_monthly', start: t0 + month, end: t0 + 2 * month }],
        }),
      );
      for (const stripeEvent of order === 'orderly' ? [first, renewal] : [renewal, first]) {
        await deliver(test, stripeEvent);
        await settleWebhooks(test);
      }
      const grants = await grantsOf(accountId);
      const rollover = grants.find((grant) => grant.source === 'rollover');
      assert.equal(rollover?.amount, 1000, `${order}: rollover capped at max_credits`);
      assert.equal(rollover?.expires_at?.getTime(), (t0 + 2 * month) * 1000);
      assert.equal(
        grants.find((grant) => grant.grant_key === `period:${subscriptionId}:si_test:${t0}`)?.remaining,
        0,
        `${order}: the old period ended`,
      );
      assert.equal((await balance(accountId)).available, 4000 + 1000, order);
    }
  });

  it('rolls over only what was left', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    await deliver(
      test,
      event(
        'invoice.paid',
        invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }] }),
      ),
    );
    await settleWebhooks(test);
    await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 3700, idempotency_key: uniqueId('use') });
    await deliver(
      test,
      event(
        'invoice.paid',
        invoice({
          customer,
          subscription: subscriptionId,
          lines: [{ price: 'price_plus_monthly', start: t0 + month, end: t0 + 2 * month }],
        }),
      ),
    );
    await settleWebhooks(test);
    assert.equal((await grantsOf(accountId)).find((grant) => grant.source === 'rollover')?.amount, 300);
  });

  it('grants a yearly plan month by month, each month once', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    await deliver(
      test,
      event(
        'invoice.paid',
        invoice({
          customer,
          subscription: subscriptionId,
          lines: [{ price: 'price_plus_yearly', start: t0, end: t0 + 365 * 86400 }],
          amountPaid: 40000,
        }),
      ),
    );
    await settleWebhooks(test);
    let grants = await grantsOf(accountId);
    assert.equal(grants.length, 1, 'month 1 on the paid invoice');
    assert.equal(grants[0]?.expires_at?.toISOString(), '2030-02-01T00:00:00.000Z');
    assert.equal(await count('yearly_schedule where subscription_id = $1 and granted_at is null', [subscriptionId]), 11);
    test.clock.advanceSeconds(31 * 86400 + 60);
    try {
      await test.parts.worker.drain();
      await test.parts.worker.drain();
      grants = await grantsOf(accountId);
      const periods = grants.filter((grant) => grant.grant_key.startsWith('period:'));
      assert.equal(periods.length, 2, 'month 2 granted by the scheduler, once');
      assert.equal(periods[1]?.expires_at?.toISOString(), '2030-03-01T00:00:00.000Z');
      assert.ok(
        grants.some((grant) => grant.source === 'rollover'),
        'the plan rolls over between months',
      );
    } finally {
      test.clock.advanceSeconds(-(31 * 86400 + 60));
    }
  });

  it('marks the subscription past due and raises an alert when a payment fails', async () => {
    const { customer, subscriptionId } = await subscriber();
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
        { created: 1_900_000_000 },
      ),
    );
    await deliver(
      test,
      event(
        'invoice.payment_failed',
        invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }] }),
        { created: 1_900_000_050 },
      ),
    );
    await settleWebhooks(test);
    const mirror = await test.database.db.query<{ status: string }>('select status from subscriptions where id = $1', [subscriptionId]);
    assert.equal(mirror.rows[0]?.status, 'past_due');
    assert.equal(await count(`alerts where alert_key = $1`, [`payment_failed:${subscriptionId}`]), 1);
  });
});

describe('packs, refunds and disputes', () => {
  async function packBuyer() {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const paymentIntent = uniqueId('pi');
    await fundedAccount(test, accountId, 0);
    const session = checkoutSession({ mode: 'payment', accountId, customer, paymentIntent, packId: 'pack_1000', amountTotal: 1000 });
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    return { accountId, customer, paymentIntent };
  }

  it('grants a pack once, never expiring; a delayed payment grants when it succeeds', async () => {
    const { accountId } = await packBuyer();
    const grants = await grantsOf(accountId);
    assert.equal(grants.length, 1);
    assert.equal(grants[0]?.source, 'purchase');
    assert.equal(grants[0]?.amount, 1000);
    assert.equal(grants[0]?.expires_at, null);
    const delayedAccount = uniqueId('acct');
    const paymentIntent = uniqueId('pi');
    await fundedAccount(test, delayedAccount, 0);
    const pending = checkoutSession({
      mode: 'payment',
      accountId: delayedAccount,
      customer: uniqueId('cus'),
      paymentIntent,
      packId: 'pack_1000',
      paymentStatus: 'unpaid',
    });
    await deliver(test, event('checkout.session.completed', pending));
    await settleWebhooks(test);
    assert.equal((await balance(delayedAccount)).available, 0, 'nothing while the payment is pending');
    await deliver(test, event('checkout.session.async_payment_succeeded', { ...pending, payment_status: 'paid' }));
    await deliver(test, event('checkout.session.async_payment_succeeded', { ...pending, payment_status: 'paid' }));
    await settleWebhooks(test);
    assert.equal((await balance(delayedAccount)).available, 1000);
  });

  it('claws back refunds in proportion, never twice, and restores a refund that failed', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const first = refund({ amount: 250, paymentIntent });
    await deliver(test, event('refund.created', first));
    await deliver(
      test,
      event('charge.refunded', { id: uniqueId('ch'), object: 'charge', payment_intent: paymentIntent, refunds: { data: [first] } }),
    );
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 750);
    const second = refund({ amount: 333, paymentIntent, status: 'pending' });
    await deliver(test, event('refund.created', second));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 417, 'floor(1000 × 333 / 1000)');
    await deliver(test, event('refund.updated', { ...second, status: 'failed' }));
    await deliver(test, event('refund.updated', { ...second, status: 'failed' }));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 750);
    const entries = await test.database.db.query<{ kind: string; amount: number }>(
      `select kind, amount from entries where account_id = $1 and kind in ('clawback', 'restore') order by id`,
      [accountId],
    );
    assert.deepEqual(entries.rows, [
      { kind: 'clawback', amount: -250 },
      { kind: 'clawback', amount: -333 },
      { kind: 'restore', amount: 333 },
    ]);
  });

  it('fetches every page of refunds when charge.refunded does not list them', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const charge = uniqueId('ch');
    fake.refundsOfCharge.set(
      charge,
      [100, 150, 200].map((amount) => refund({ amount, paymentIntent, charge })),
    );
    fake.pageSize = 2;
    try {
      await deliver(test, event('charge.refunded', { id: charge, object: 'charge', payment_intent: paymentIntent }));
      await settleWebhooks(test);
    } finally {
      fake.pageSize = 100;
    }
    assert.equal((await balance(accountId)).available, 550, 'all three refunds clawed back, across two pages');
    assert.equal(fake.requests.filter((request) => request.path === '/v1/refunds' && request.params.charge === charge).length, 2);
  });

  it('never claws back more than a payment granted, whatever the refunds add up to', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    for (const amount of [600, 600, 600]) await deliver(test, event('refund.created', refund({ amount, paymentIntent })));
    await settleWebhooks(test);
    const payment = await test.database.db.query<{ clawed_back: number; credits: number }>(
      'select clawed_back, credits from payments where payment_intent = $1',
      [paymentIntent],
    );
    assert.deepEqual(payment.rows[0], { clawed_back: 1000, credits: 1000 });
    assert.equal((await balance(accountId)).available, 0);
  });

  it('leaves an account in debt when the credits were spent, and the next grant repays it first', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 900, idempotency_key: uniqueId('use') });
    await deliver(test, event('refund.created', refund({ amount: 1000, paymentIntent })));
    await settleWebhooks(test);
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 900 });
    const refused = await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 1, idempotency_key: uniqueId('use') });
    assert.equal(refused.status, 402);
    await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
      amount: 1000,
      source: 'promo',
      reason: 'goodwill',
      idempotency_key: uniqueId('g'),
    });
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 100, held: 0, debt: 0 });
    const facts = await ledgerFacts(test, accountId);
    assert.equal(facts.entry_sum, facts.available - facts.debt);
  });

  it('finds the payment through the Stripe API when a refund names only its charge', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const charge = uniqueId('ch');
    fake.charges.set(charge, { payment_intent: paymentIntent });
    await deliver(test, event('refund.created', refund({ amount: 500, paymentIntent: null, charge })));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 500);
    assert.ok(fake.requests.some((request) => request.path === `/v1/charges/${charge}`));
  });

  it('finds a subscription invoice by its payment intent through invoice payments', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    const paid = invoice({
      customer,
      subscription: subscriptionId,
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
      amountPaid: 2000,
    });
    await deliver(test, event('invoice.paid', paid));
    await settleWebhooks(test);
    const viaEvent = uniqueId('pi');
    await deliver(test, event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent: viaEvent })));
    await deliver(test, event('refund.created', refund({ amount: 500, paymentIntent: viaEvent })));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 3000, 'a quarter of 4000 clawed back');
    const second = await subscriber();
    const unlinked = invoice({
      customer: second.customer,
      subscription: second.subscriptionId,
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
      amountPaid: 2000,
    });
    await deliver(test, event('invoice.paid', unlinked));
    await settleWebhooks(test);
    const viaApi = uniqueId('pi');
    fake.invoiceOfPaymentIntent.set(viaApi, unlinked.id);
    await deliver(test, event('refund.created', refund({ amount: 1000, paymentIntent: viaApi })));
    await settleWebhooks(test);
    assert.equal((await balance(second.accountId)).available, 2000);
  });

  it('applies invoice_payment.paid of an invoice that bought no credits at once, keeping only the link', async () => {
    const linked = event('invoice_payment.paid', invoicePayment({ invoice: uniqueId('in'), paymentIntent: uniqueId('pi') }));
    await deliver(test, linked);
    await settleWebhooks(test);
    const { rows } = await test.database.db.query<{ status: string; attempts: number; last_error: string | null }>(
      'select status, attempts, last_error from webhook_events where id = $1',
      [linked.id],
    );
    assert.deepEqual(rows, [{ status: 'processed', attempts: 1, last_error: null }], 'no retries, no failure, no alert');
    const alerts = await test.database.db.query(`select 1 from alerts where details->>'event' = $1`, [linked.id]);
    assert.equal(alerts.rowCount, 0);
  });

  it('links the payment when invoice_payment.paid arrives before its invoice, without asking Stripe', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    const paid = invoice({
      customer,
      subscription: subscriptionId,
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
      amountPaid: 2000,
    });
    const paymentIntent = uniqueId('pi');
    await deliver(test, event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent })));
    await settleWebhooks(test);
    await deliver(test, event('invoice.paid', paid));
    await settleWebhooks(test);
    await deliver(test, event('refund.created', refund({ amount: 1000, paymentIntent })));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 2000, 'half of 4000 clawed back');
    assert.ok(
      !fake.requests.some((request) => request.params['payment[payment_intent]'] === paymentIntent),
      'the link came from the event, not the API',
    );
  });

  it('claws back a dispute, flags the account and alerts; a won dispute restores', async () => {
    const { accountId, paymentIntent } = await packBuyer();
    const opened = dispute({ amount: 1000, paymentIntent });
    await deliver(test, event('charge.dispute.created', opened));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 0);
    const account = await test.database.db.query<{ flagged: boolean }>('select flagged from accounts where id = $1', [accountId]);
    assert.equal(account.rows[0]?.flagged, true);
    assert.equal(await count('alerts where alert_key = $1', [`dispute:${opened.id}`]), 1);
    await deliver(test, event('charge.dispute.closed', { ...opened, status: 'won' }));
    await deliver(test, event('charge.dispute.closed', { ...opened, status: 'won' }));
    await settleWebhooks(test);
    assert.equal((await balance(accountId)).available, 1000);
  });
});

describe('inbox administration', () => {
  it('lists events by status and type, and replays one with its effects still exactly once', async () => {
    const { accountId, customer, subscriptionId } = await subscriber();
    const paid = event(
      'invoice.paid',
      invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }] }),
    );
    await deliver(test, paid);
    await settleWebhooks(test);
    const listed = await test.admin('GET', '/v1/admin/webhook-events?type=invoice.paid&status=processed&limit=500');
    assert.equal(listed.status, 200);
    assert.ok(listed.body.events.some((row: { id: string }) => row.id === paid.id));
    assert.ok(
      listed.body.events.every((row: { type: string; status: string }) => row.type === 'invoice.paid' && row.status === 'processed'),
    );
    const replayed = await test.admin('POST', `/v1/admin/webhook-events/${paid.id}/replay`);
    assert.equal(replayed.status, 200);
    assert.equal(replayed.body.outcome, 'processed');
    assert.equal((await grantsOf(accountId)).length, 1);
    const audit = await test.database.db.query<{ account_id: string; before: { status: string }; after: { outcome: string } }>(
      `select account_id, before, after from audit_log where action = 'webhook.replay' and after->>'event' = $1`,
      [paid.id],
    );
    assert.deepEqual(audit.rows, [
      { account_id: accountId, before: { event: paid.id, status: 'processed' }, after: { event: paid.id, outcome: 'processed' } },
    ]);
    assert.equal((await test.admin('POST', '/v1/admin/webhook-events/evt_missing/replay')).status, 404);
    assert.equal((await test.call('GET', '/v1/admin/webhook-events')).status, 403);
  });

  it('fails an event after its bounded retries, with an alert, and keeps it for a replay', async () => {
    // A refund of a payment that is Tally's (its metadata says so) but whose grant never arrives.
    const paymentIntent = uniqueId('pi');
    fake.paymentIntents.set(paymentIntent, { metadata: { tally_account_id: 'someone' } });
    const orphan = event('refund.created', refund({ amount: 100, paymentIntent }));
    await deliver(test, orphan);
    await test.database.db.query('update webhook_events set attempts = 13 where id = $1', [orphan.id]);
    await settleWebhooks(test);
    const row = await test.database.db.query<{ status: string; attempts: number }>(
      'select status, attempts from webhook_events where id = $1',
      [orphan.id],
    );
    assert.deepEqual(row.rows[0], { status: 'failed', attempts: 14 });
    assert.equal(await count('alerts where alert_key = $1', [`webhook_failed:${orphan.id}`]), 1);
    assert.equal((await test.admin('GET', '/v1/admin/webhook-events?status=failed')).body.events.length >= 1, true);
  });
});

describe('checkout', () => {
  it('creates a subscription checkout naming the account, with an idempotency key', async () => {
    await fundedAccount(test, 'checkout-1', 0);
    await test.call('PUT', '/v1/accounts/checkout-1', { email: 'buyer@example.com' });
    const response = await test.call('POST', '/v1/accounts/checkout-1/checkout', {
      plan_id: 'plus',
      interval: 'year',
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(response.status, 200);
    assert.match(response.body.session_id, /^cs_test_fake_/);
    assert.match(response.body.url, /^https:\/\/checkout\.stripe\.test\//);
    const request = fake.requests.filter((candidate) => candidate.path === '/v1/checkout/sessions').at(-1);
    assert.equal(request?.params.mode, 'subscription');
    assert.equal(request?.params['line_items[0][price]'], 'price_plus_yearly');
    const reference = await test.call('GET', '/v1/accounts/checkout-1/client-reference');
    assert.equal(request?.params.client_reference_id, reference.body.client_reference_id, 'a signed reference, never the bare account id');
    assert.equal(request?.params['subscription_data[metadata][tally_account_id]'], 'checkout-1');
    assert.equal(request?.params.customer_email, 'buyer@example.com');
    assert.match(request?.idempotencyKey ?? '', /^checkout:checkout-1:plus:[0-9a-f]{16}:\d+$/);
  });

  it('creates a pack checkout and a trial checkout', async () => {
    const pack = await test.call('POST', '/v1/accounts/checkout-1/checkout', {
      pack_id: 'pack_1000',
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(pack.status, 200);
    const packRequest = fake.requests.filter((candidate) => candidate.path === '/v1/checkout/sessions').at(-1);
    assert.equal(packRequest?.params.mode, 'payment');
    assert.equal(packRequest?.params['metadata[tally_pack_id]'], 'pack_1000');
    const trial = await test.call('POST', '/v1/accounts/checkout-1/checkout', {
      plan_id: 'plus',
      interval: 'month',
      trial: true,
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(trial.status, 200);
    assert.equal(
      fake.requests.filter((candidate) => candidate.path === '/v1/checkout/sessions').at(-1)?.params[
        'subscription_data[trial_period_days]'
      ],
      '7',
    );
  });

  it('refuses unknown plans (404), a trial the plan lacks (403), and bad input (400)', async () => {
    const urls = { success_url: 'https://app.test/ok', cancel_url: 'https://app.test/no' };
    assert.equal(
      (await test.call('POST', '/v1/accounts/checkout-1/checkout', { plan_id: 'gold', interval: 'month', ...urls })).body.error.code,
      'plan_not_found',
    );
    assert.equal(
      (await test.call('POST', '/v1/accounts/checkout-1/checkout', { plan_id: 'starter', interval: 'year', ...urls })).status,
      404,
    );
    assert.equal((await test.call('POST', '/v1/accounts/checkout-1/checkout', { pack_id: 'pack_9', ...urls })).status, 404);
    const noTrial = await test.call('POST', '/v1/accounts/checkout-1/checkout', {
      plan_id: 'starter',
      interval: 'month',
      trial: true,
      ...urls,
    });
    assert.equal(noTrial.status, 403);
    assert.equal(noTrial.body.error.code, 'trial_not_eligible');
    assert.equal(noTrial.body.error.reason, 'plan_has_no_trial');
    assert.equal((await test.call('POST', '/v1/accounts/checkout-1/checkout', { plan_id: 'plus', ...urls })).body.error.field, 'interval');
    assert.equal(
      (
        await test.call('POST', '/v1/accounts/checkout-1/checkout', {
          plan_id: 'plus',
          interval: 'month',
          success_url: 'nope',
          cancel_url: urls.cancel_url,
        })
      ).body.error.field,
      'success_url',
    );
    assert.equal((await test.call('POST', '/v1/accounts/nobody-here/checkout', { pack_id: 'pack_1000', ...urls })).status, 404);
  });
});
