import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

/**
 * Issue 9, "Trials, packs and modes": trial checkouts take cards only; a trial claims the email
 * typed into Checkout and every payment method fingerprint Stripe gives, so Link and bank
 * payers cannot repeat it; return URLs are https (http only for this machine) and, when
 * configured, on an allowed host.
 */
let test: TestApp;
let restricted: TestApp;
let fake: FakeStripe;
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;
const trialEnd = t0 + 7 * 86400;

before(async () => {
  fake = await new FakeStripe().start();
  test = await createTestApp({ stripeApiBase: fake.url });
  restricted = await createTestApp({ database: test.database, stripeApiBase: fake.url, checkoutUrlHosts: ['app.test'] });
});
after(async () => {
  await restricted.close();
  await test.close();
  await fake.stop();
});

const lastSessionRequest = () =>
  fake.requests.filter((request) => request.method === 'POST' && request.path === '/v1/checkout/sessions').at(-1);

async function account(email?: string): Promise<string> {
  const accountId = uniqueId('acct');
  assert.equal((await test.call('PUT', `/v1/accounts/${accountId}`, email === undefined ? {} : { email })).status, 200);
  return accountId;
}

describe('trial checkouts', () => {
  it('accept cards only, through allowed_payment_method_types (payment_method_types is gone under endive)', async () => {
    const accountId = await account();
    const trial = await test.call('POST', `/v1/accounts/${accountId}/checkout`, {
      plan_id: 'plus',
      interval: 'month',
      trial: true,
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(trial.status, 200, JSON.stringify(trial.body));
    const params = lastSessionRequest()?.params ?? {};
    assert.equal(params['allowed_payment_method_types[0]'], 'card');
    assert.equal(params['allowed_payment_method_types[1]'], undefined);
    assert.equal(
      Object.keys(params).some((name) => name.startsWith('payment_method_types')),
      false,
    );
    await test.call('POST', `/v1/accounts/${accountId}/checkout`, {
      plan_id: 'plus',
      interval: 'year',
      success_url: 'https://app.test/ok',
      cancel_url: 'https://app.test/no',
    });
    assert.equal(lastSessionRequest()?.params['allowed_payment_method_types[0]'], undefined, 'a paid plan takes any method');
  });
});

describe('trial claims beyond the card', () => {
  /** A trial subscription of Tally's checkout, paid with `paymentMethod`, its Checkout typed with `email`. */
  async function startTrial(accountId: string, paymentMethod: Record<string, unknown> | undefined, email?: string) {
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    const methodId = paymentMethod === undefined ? null : uniqueId('pm');
    if (methodId !== null && paymentMethod !== undefined) fake.paymentMethods.set(methodId, paymentMethod);
    fake.checkoutSessions.push(
      checkoutSession({
        mode: 'subscription',
        accountId,
        customer,
        subscription: subscriptionId,
        paymentStatus: 'no_payment_required',
        email: email ?? `${uniqueId('buyer')}@example.com`,
      }),
    );
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({
          id: subscriptionId,
          customer,
          status: 'trialing',
          price: 'price_plus_monthly',
          start: t0,
          end: trialEnd,
          trialEnd,
          accountId,
          defaultPaymentMethod: methodId,
        }),
      ),
    );
    await settleWebhooks(test);
    const granted = await test.database.db.query(`select 1 from grants where account_id = $1 and source = 'trial'`, [accountId]);
    const refused = await test.database.db.query<{ reason: string }>('select reason from trial_refusals where subscription_id = $1', [
      subscriptionId,
    ]);
    return { granted: granted.rowCount === 1, refusal: refused.rows[0]?.reason };
  }

  it('claims the email typed into Checkout, normalized', async () => {
    assert.deepEqual(await startTrial(await account(), undefined, 'Typed.Buyer+trial@Example.com'), { granted: true, refusal: undefined });
    assert.deepEqual(await startTrial(await account('typed.buyer@example.com'), undefined), { granted: false, refusal: 'email_had_trial' });
  });

  it("claims a Link payment method's email", async () => {
    assert.deepEqual(await startTrial(await account(), { type: 'link', link: { email: 'linker@example.com' } }), {
      granted: true,
      refusal: undefined,
    });
    assert.deepEqual(await startTrial(await account(), { type: 'link', link: { email: 'LINKER@example.com' } }), {
      granted: false,
      refusal: 'email_had_trial',
    });
  });

  it('claims the fingerprint of a payment method that is not a card', async () => {
    const bank = { type: 'us_bank_account', us_bank_account: { fingerprint: uniqueId('fp'), last4: '6789' } };
    assert.deepEqual(await startTrial(await account(), bank), { granted: true, refusal: undefined });
    assert.deepEqual(await startTrial(await account(), bank), { granted: false, refusal: 'payment_method_had_trial' });
  });
});

describe('return URLs', () => {
  const checkout = (app: TestApp, accountId: string, success_url: string) =>
    app.call('POST', `/v1/accounts/${accountId}/checkout`, { pack_id: 'pack_1000', success_url, cancel_url: 'https://app.test/no' });

  it('refuse javascript:, data:, file: and plain http elsewhere than this machine, before asking Stripe', async () => {
    const accountId = await account();
    const before = fake.requests.length;
    for (const url of ['javascript:alert(1)', 'data:text/html,hi', 'file:///etc/passwd', 'http://app.test/ok']) {
      const response = await checkout(test, accountId, url);
      assert.equal(response.status, 400, url);
      assert.equal(response.body.error.field, 'success_url', url);
    }
    assert.equal(fake.requests.length, before, 'nothing reached Stripe');
    for (const url of ['https://app.test/ok', 'http://localhost:5173/ok', 'http://127.0.0.1:8080/ok'])
      assert.equal((await checkout(test, accountId, url)).status, 200, url);
  });

  it('reach Stripe exactly as they were checked, in their normalized form', async () => {
    // Proves Tally sends the URL its parser read, not the raw text: a tab inside the host, a
    // backslash and an upper-case host are what a second parser could read as another place.
    const accountId = await account();
    for (const [sent, expected] of [
      ['https://APP.test/a/../ok', 'https://app.test/ok'],
      ['https://app.te\tst/ok', 'https://app.test/ok'],
      ['https://app.test\\ok?x=1', 'https://app.test/ok?x=1'],
    ] as const) {
      const response = await checkout(test, accountId, sent);
      assert.equal(response.status, 200, sent);
      const created = fake.requests.filter((request) => request.path === '/v1/checkout/sessions' && request.method === 'POST').at(-1);
      assert.equal(created?.params.success_url, expected, sent);
    }
  });

  it('keep to TALLY_CHECKOUT_URL_HOSTS when it is set', async () => {
    const accountId = await account();
    assert.equal((await checkout(restricted, accountId, 'https://app.test/ok')).status, 200);
    const elsewhere = await checkout(restricted, accountId, 'https://evil.test/ok');
    assert.equal(elsewhere.status, 400);
    assert.match(elsewhere.body.error.message, /TALLY_CHECKOUT_URL_HOSTS/);
  });
});
