import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { ClaimHasher } from '../../src/billing/claim-hasher.js';
import { signClientReference, verifyClientReference } from '../../src/billing/client-reference.js';
import { fundedAccount, ledgerFacts, type TestApp, startWithFakeStripe, stopWithFakeStripe } from '../helpers/app.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import {
  checkoutLineItem,
  checkoutSession,
  deliver,
  dispute,
  event,
  invoice,
  month,
  refund,
  settleWebhooks,
  subscription,
  uniqueId,
  type SessionLineItem,
} from '../helpers/stripe-events.js';

/**
 * Whose payment it is (SPEC "Attribution", issue 9) and which objects are Tally's at all (issue 8
 * item 9): a bare client_reference_id proves nothing; Tally's metadata, a linked customer or a
 * reference Tally signed do. Packs follow the prices paid, never metadata (issue 8 item 10).
 */
let test: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

before(async () => ({ test, fake } = await startWithFakeStripe()));
after(() => stopWithFakeStripe(test, fake));

const db = () => test.database.db;
const inbox = async (eventId: string) =>
  (
    await db().query<{ status: string; attempts: number; ignored_reason: string | null }>(
      'select status, attempts, ignored_reason from webhook_events where id = $1',
      [eventId],
    )
  ).rows[0];
const customerOf = async (accountId: string) =>
  (await db().query<{ stripe_customer_id: string | null }>('select stripe_customer_id from accounts where id = $1', [accountId])).rows[0]
    ?.stripe_customer_id;
const alertCount = async (kind: string) =>
  (await db().query<{ count: number }>('select count(*)::int as count from alerts where kind = $1', [kind])).rows[0]?.count ?? 0;
const referenceOf = async (accountId: string): Promise<string> => {
  const response = await test.call('GET', `/v1/accounts/${accountId}/client-reference`);
  assert.equal(response.status, 200);
  return response.body.client_reference_id as string;
};

/**
 * A purchase through a Payment Link (or pricing table): the session has the link's metadata (none
 * of Tally's) and whatever client_reference_id the buyer's URL carried. Stripe holds the session,
 * its line items and its payment intent; the webhook carries no line items.
 */
function linkPurchase(spec: {
  customer: string;
  clientReference: string | null;
  items: SessionLineItem[];
  metadata?: Record<string, string>;
  amountTotal?: number;
}) {
  const paymentIntent = uniqueId('pi');
  const session = checkoutSession({
    mode: 'payment',
    customer: spec.customer,
    paymentIntent,
    clientReference: spec.clientReference,
    metadata: spec.metadata ?? {},
    lineItems: spec.items,
    lineItemsInPayload: false,
    amountTotal: spec.amountTotal ?? 1000,
  });
  session.payment_link = uniqueId('plink');
  fake.checkoutSessions.push(session);
  fake.checkoutLineItems.set(session.id, spec.items.map(checkoutLineItem));
  fake.paymentIntents.set(paymentIntent, { customer: spec.customer, metadata: spec.metadata ?? {} });
  return { session, paymentIntent };
}

describe('the takeover through client_reference_id fails in each of its forms', () => {
  it("does not link an attacker's customer to the victim, so the victim's next checkout is the victim's own", async () => {
    const victim = uniqueId('victim');
    await fundedAccount(test, victim, 0);
    await test.call('PUT', `/v1/accounts/${victim}`, { email: 'victim@example.com' });
    const attackerCustomer = uniqueId('cus_attacker');
    const subscriptionId = uniqueId('sub');
    const session = checkoutSession({
      mode: 'subscription',
      customer: attackerCustomer,
      subscription: subscriptionId,
      clientReference: victim,
      metadata: {},
    });
    fake.checkoutSessions.push(session);
    const completed = event('checkout.session.completed', session);
    await deliver(test, completed);
    await settleWebhooks(test);
    assert.equal(await customerOf(victim), null, 'the bare id in client_reference_id linked nothing');
    assert.equal((await inbox(completed.id))?.status, 'ignored');
    assert.match((await inbox(completed.id))?.ignored_reason ?? '', /not Tally's/);
    const checkout = await test.call('POST', `/v1/accounts/${victim}/checkout`, {
      plan_id: 'plus',
      interval: 'month',
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(checkout.status, 200);
    const request = fake.requests.filter((candidate) => candidate.path === '/v1/checkout/sessions' && candidate.method === 'POST').at(-1);
    assert.equal(request?.params.customer, undefined, "the victim's checkout is not created for the attacker's customer");
    assert.equal(request?.params.customer_email, 'victim@example.com');
  });

  it("does not spend the victim's trial on the attacker's trial subscription", async () => {
    const victim = uniqueId('victim');
    await fundedAccount(test, victim, 0);
    const attackerCustomer = uniqueId('cus_attacker');
    const subscriptionId = uniqueId('sub');
    const trialEnd = t0 + 7 * 86400;
    const session = checkoutSession({
      mode: 'subscription',
      customer: attackerCustomer,
      subscription: subscriptionId,
      clientReference: victim,
      metadata: {},
      paymentStatus: 'no_payment_required',
    });
    fake.checkoutSessions.push(session);
    const trialing = event(
      'customer.subscription.created',
      subscription({
        id: subscriptionId,
        customer: attackerCustomer,
        status: 'trialing',
        price: 'price_plus_monthly',
        start: t0,
        end: trialEnd,
        trialEnd,
      }),
    );
    await deliver(test, trialing);
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    assert.equal((await inbox(trialing.id))?.status, 'ignored');
    const claims = await db().query('select 1 from trial_claims where account_id = $1', [victim]);
    assert.equal(claims.rowCount, 0, 'no claim was taken in the name of the victim');
    const eligibility = await test.call('GET', `/v1/accounts/${victim}/trial-eligibility`);
    assert.deepEqual(eligibility.body, { eligible: true });
    const checkout = await test.call('POST', `/v1/accounts/${victim}/checkout`, {
      plan_id: 'plus',
      interval: 'month',
      trial: true,
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(checkout.status, 200, JSON.stringify(checkout.body));
  });

  it('does not leave the victim flagged and in debt after the attacker disputes a pack bought in their name', async () => {
    const victim = uniqueId('victim');
    await fundedAccount(test, victim, 0);
    // A merchant's Payment Link that copies Tally's own metadata convention for the pack.
    const { session, paymentIntent } = linkPurchase({
      customer: uniqueId('cus_attacker'),
      clientReference: victim,
      items: [{ price: 'price_pack_1000' }],
      metadata: { tally_pack_id: 'pack_1000' },
    });
    const completed = event('checkout.session.completed', session);
    await deliver(test, completed);
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, victim)).available, 0, 'nothing was granted to the victim');
    assert.equal((await inbox(completed.id))?.status, 'ignored');
    assert.match((await inbox(completed.id))?.ignored_reason ?? '', /unattributed/);
    assert.ok((await alertCount('unattributed_payment')) >= 1, 'someone paid for credits nobody received: an operator is told');
    const disputed = event('charge.dispute.created', dispute({ amount: 1000, paymentIntent }));
    await deliver(test, disputed);
    await settleWebhooks(test);
    const facts = await ledgerFacts(test, victim);
    assert.equal(facts.debt, 0);
    const flagged = await db().query<{ flagged: boolean }>('select flagged from accounts where id = $1', [victim]);
    assert.equal(flagged.rows[0]?.flagged, false);
    assert.equal((await inbox(disputed.id))?.status, 'ignored', 'a dispute of a payment Tally never granted for is not retried');
    assert.equal((await inbox(disputed.id))?.attempts, 1);
  });
});

describe('signed client references', () => {
  it('attributes a Payment Link purchase carrying the signed reference, granting by the line items fetched from Stripe', async () => {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const customer = uniqueId('cus');
    const reference = await referenceOf(buyer);
    assert.match(reference, /^[A-Za-z0-9_-]{1,200}$/, "Stripe's charset for client_reference_id");
    const { session } = linkPurchase({
      customer,
      clientReference: reference,
      items: [{ price: 'price_pack_1000', quantity: 3 }],
      amountTotal: 3000,
    });
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, buyer)).available, 3000, 'three packs of 1000');
    assert.equal(await customerOf(buyer), customer, 'the signed reference links the customer of an account that had none');
    assert.ok(fake.requests.some((request) => request.path === `/v1/checkout/sessions/${session.id}/line_items`));
  });

  it('treats a tampered or a foreign reference as unattributed: nothing granted, ignored at once, an alert', async () => {
    const target = uniqueId('target');
    await fundedAccount(test, target, 0);
    const genuine = await referenceOf(target);
    const lastCharacter = genuine.at(-1) === 'A' ? 'B' : 'A';
    const tampered = `${genuine.slice(0, -1)}${lastCharacter}`;
    const otherAccount = `${genuine.slice(0, 3)}${Buffer.from(`${target}x`).toString('base64url')}${genuine.slice(-23)}`;
    const foreign = signClientReference(new ClaimHasher('another-tally-installation-secret'), target);
    const alertsBefore = await alertCount('unattributed_payment');
    for (const reference of [tampered, otherAccount, foreign]) {
      const { session } = linkPurchase({ customer: uniqueId('cus'), clientReference: reference, items: [{ price: 'price_pack_1000' }] });
      const completed = event('checkout.session.completed', session);
      await deliver(test, completed);
      await settleWebhooks(test);
      const row = await inbox(completed.id);
      assert.deepEqual({ status: row?.status, attempts: row?.attempts }, { status: 'ignored', attempts: 1 }, reference);
      assert.match(row?.ignored_reason ?? '', /unattributed/);
    }
    assert.equal((await ledgerFacts(test, target)).available, 0);
    assert.equal(await customerOf(target), null);
    assert.equal((await alertCount('unattributed_payment')) - alertsBefore, 3);
  });

  it('attributes a Payment Link subscription by its signed reference, even when the invoice comes before the session', async () => {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    const session = checkoutSession({
      mode: 'subscription',
      customer,
      subscription: subscriptionId,
      clientReference: await referenceOf(buyer),
      metadata: {},
    });
    session.payment_link = uniqueId('plink');
    fake.checkoutSessions.push(session);
    await deliver(
      test,
      event(
        'invoice.paid',
        invoice({
          customer,
          subscription: subscriptionId,
          billingReason: 'subscription_create',
          lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
        }),
      ),
    );
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month }),
      ),
    );
    await settleWebhooks(test);
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, buyer)).available, 4000);
    assert.equal(await customerOf(buyer), customer);
    const mirror = await db().query<{ account_id: string }>('select account_id from subscriptions where id = $1', [subscriptionId]);
    assert.equal(mirror.rows[0]?.account_id, buyer);
  });

  it('answers 404 for an unknown account, and is described in the OpenAPI document', async () => {
    const missing = await test.call('GET', `/v1/accounts/${uniqueId('nobody')}/client-reference`);
    assert.equal(missing.status, 404);
    assert.equal(missing.body.error.code, 'account_not_found');
    const openapi = await test.call('GET', '/openapi.json', undefined, null);
    assert.ok(openapi.body.paths['/v1/accounts/{id}/client-reference']?.get);
  });

  it('round-trips the longest account id within 200 characters, and refuses what it did not sign', () => {
    const hasher = new ClaimHasher('a-secret-of-at-least-sixteen');
    const longest = 'a'.repeat(128);
    const reference = signClientReference(hasher, longest);
    assert.ok(reference.length <= 200);
    assert.equal(verifyClientReference(hasher, reference), longest);
    assert.equal(verifyClientReference(hasher, 'acct_1'), undefined);
    assert.equal(verifyClientReference(hasher, `${reference}x`), undefined);
    assert.equal(verifyClientReference(new ClaimHasher('another-secret-of-sixteen'), reference), undefined);
  });
});

describe('the runbook for an unattributed payment', () => {
  it('grants once when an operator links the buyer’s customer and replays the event', async () => {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const customer = uniqueId('cus');
    const { session } = linkPurchase({ customer, clientReference: null, items: [{ price: 'price_pack_1000' }] });
    const completed = event('checkout.session.completed', session);
    await deliver(test, completed);
    await settleWebhooks(test);
    assert.equal((await inbox(completed.id))?.status, 'ignored');
    await db().query('update accounts set stripe_customer_id = $2, updated_at = now() where id = $1 and stripe_customer_id is null', [
      buyer,
      customer,
    ]);
    for (let replay = 0; replay < 2; replay += 1) {
      const response = await test.admin('POST', `/v1/admin/webhook-events/${completed.id}/replay`);
      assert.equal(response.body.outcome, 'processed');
    }
    assert.equal((await ledgerFacts(test, buyer)).available, 1000);
    assert.equal((await inbox(completed.id))?.ignored_reason, null);
  });
});

describe('a webhook never moves a customer link', () => {
  it("attributes a session by Tally's metadata, but leaves the customer linked to the account that had it", async () => {
    const owner = uniqueId('owner');
    const other = uniqueId('other');
    const customer = uniqueId('cus');
    await fundedAccount(test, owner, 0);
    await fundedAccount(test, other, 0);
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'subscription', accountId: owner, customer, subscription: uniqueId('sub') }),
      ),
    );
    await settleWebhooks(test);
    assert.equal(await customerOf(owner), customer);
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'subscription', accountId: other, customer, subscription: uniqueId('sub') }),
      ),
    );
    await settleWebhooks(test);
    assert.equal(await customerOf(owner), customer);
    assert.equal(await customerOf(other), null);
  });
});

describe('packs follow the price paid', () => {
  it("grants the small pack for a 50-cent session whose metadata names the big pack, even in Tally's own session", async () => {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const paymentIntent = uniqueId('pi');
    const session = checkoutSession({
      mode: 'payment',
      accountId: buyer,
      customer: uniqueId('cus'),
      paymentIntent,
      packId: 'pack_10000',
      lineItems: [{ price: 'price_pack_1000' }],
      lineItemsInPayload: false,
      amountTotal: 50,
    });
    fake.checkoutLineItems.set(session.id, [checkoutLineItem({ price: 'price_pack_1000' })]);
    await deliver(test, event('checkout.session.completed', session));
    await settleWebhooks(test);
    assert.equal((await ledgerFacts(test, buyer)).available, 1000);
  });
});

describe("objects that are not Tally's are ignored at once, with the reason, without alerts", () => {
  it('ignores an invoice of a price outside the catalog, a subscription of an unknown customer, and a refund of a payment Tally never granted for', async () => {
    const alertsBefore = (await db().query<{ count: number }>('select count(*)::int as count from alerts')).rows[0]?.count;
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    const foreignPrice = event(
      'invoice.paid',
      invoice({ customer, subscription: subscriptionId, lines: [{ price: 'price_something_else', start: t0, end: t0 + month }] }),
    );
    const unknownCustomer = event(
      'customer.subscription.created',
      subscription({
        id: uniqueId('sub'),
        customer: uniqueId('cus'),
        status: 'active',
        price: 'price_plus_monthly',
        start: t0,
        end: t0 + month,
      }),
    );
    const foreignSubscriptionPrice = event(
      'customer.subscription.created',
      subscription({ id: subscriptionId, customer, status: 'active', price: 'price_something_else', start: t0, end: t0 + month }),
    );
    const paymentIntent = uniqueId('pi');
    fake.paymentIntents.set(paymentIntent, { customer: uniqueId('cus') });
    const foreignRefund = event('refund.created', refund({ amount: 500, paymentIntent }));
    const events = [foreignPrice, unknownCustomer, foreignSubscriptionPrice, foreignRefund];
    for (const stripeEvent of events) await deliver(test, stripeEvent);
    await settleWebhooks(test);
    for (const stripeEvent of events) {
      const row = await inbox(stripeEvent.id);
      assert.deepEqual({ status: row?.status, attempts: row?.attempts }, { status: 'ignored', attempts: 1 }, stripeEvent.type);
      assert.match(row?.ignored_reason ?? '', /not Tally's/, stripeEvent.type);
    }
    assert.match((await inbox(foreignPrice.id))?.ignored_reason ?? '', /catalog/);
    const alertsAfter = (await db().query<{ count: number }>('select count(*)::int as count from alerts')).rows[0]?.count;
    assert.equal(alertsAfter, alertsBefore, 'no alert for the merchant’s other business');
    const listed = await test.admin('GET', '/v1/admin/webhook-events?status=ignored');
    assert.ok(
      listed.body.events.some(
        (row: { id: string; ignored_reason?: string }) => row.id === foreignRefund.id && typeof row.ignored_reason === 'string',
      ),
      'operators see the reason',
    );
  });

  it('still waits for a refund of a payment that is Tally’s but whose grant has not arrived', async () => {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const paymentIntent = uniqueId('pi');
    fake.paymentIntents.set(paymentIntent, { metadata: { tally_account_id: buyer } });
    const early = event('refund.created', refund({ amount: 1000, paymentIntent }));
    await deliver(test, early);
    await test.parts.worker.drain();
    assert.equal((await inbox(early.id))?.status, 'pending');
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'payment', accountId: buyer, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000' }),
      ),
    );
    await settleWebhooks(test);
    assert.equal((await inbox(early.id))?.status, 'processed');
    assert.equal((await ledgerFacts(test, buyer)).available, 0);
  });
});

describe('modes', () => {
  /** A pack bought through Checkout whose event says `livemode`; answers the buyer and the event. */
  async function packEventWithMode(livemode: unknown) {
    const buyer = uniqueId('buyer');
    await fundedAccount(test, buyer, 0);
    const delivered = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', accountId: buyer, customer: uniqueId('cus'), paymentIntent: uniqueId('pi'), packId: 'pack_1000' }),
    );
    (delivered as { livemode: unknown }).livemode = livemode;
    await deliver(test, delivered);
    await settleWebhooks(test);
    return { buyer, delivered };
  }

  it("ignores an event whose livemode differs from the secret key's mode", async () => {
    const { buyer, delivered } = await packEventWithMode(true);
    assert.equal((await inbox(delivered.id))?.status, 'ignored');
    assert.match((await inbox(delivered.id))?.ignored_reason ?? '', /livemode/);
    assert.equal((await ledgerFacts(test, buyer)).available, 0);
  });

  it('ignores an event whose livemode is present but not a boolean', async () => {
    // Stripe always sends true or false; a string or a number is no mode at all, and must not
    // pass as an event that "does not say".
    for (const odd of ['false', 0, null]) {
      const { buyer, delivered } = await packEventWithMode(odd);
      assert.equal((await inbox(delivered.id))?.status, 'ignored', `livemode ${JSON.stringify(odd)}`);
      assert.match((await inbox(delivered.id))?.ignored_reason ?? '', /livemode/);
      assert.equal((await ledgerFacts(test, buyer)).available, 0);
    }
  });
});
