import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { checkoutSession, deliver, event, settleWebhooks, uniqueId } from '../helpers/stripe-events.js';

/**
 * Issue 19, items 10 and 12: an operator's corrections are not spends (they never count toward
 * a spend limit nor are refused for one), and erasing an account's personal data keeps the
 * attribution Tally set on Stripe events still waiting to be applied.
 */
let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

describe('admin corrections and spend limits (item 10)', () => {
  it('a +50 goodwill credit at the daily limit is made; a negative adjustment is not counted as spend', async () => {
    const accountId = uniqueId('acct');
    await fundedAccount(test, accountId, 1000);
    assert.equal((await test.call('PUT', `/v1/accounts/${accountId}/limits`, { per_day: 100 })).status, 200);
    assert.equal(
      (await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 100, idempotency_key: uniqueId('use') })).status,
      200,
    );
    const goodwill = await test.admin('POST', `/v1/accounts/${accountId}/adjustments`, {
      amount: 50,
      reason: 'goodwill',
      idempotency_key: uniqueId('adj'),
    });
    assert.equal(goodwill.status, 201, JSON.stringify(goodwill.body));
    const correction = await test.admin('POST', `/v1/accounts/${accountId}/adjustments`, {
      amount: -30,
      reason: 'double grant',
      idempotency_key: uniqueId('adj'),
    });
    assert.equal(correction.status, 201, JSON.stringify(correction.body));
    const limits = await test.call('GET', `/v1/accounts/${accountId}/limits`);
    assert.deepEqual(limits.body.spent, { day: 100, month: 100 }, 'only the usage counts');
    assert.equal((await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available, 1000 - 100 + 50 - 30);
    const overdraw = await test.admin('POST', `/v1/accounts/${accountId}/adjustments`, {
      amount: -5000,
      reason: 'too much',
      idempotency_key: uniqueId('adj'),
    });
    assert.equal(overdraw.status, 402);
    assert.equal(overdraw.body.error.code, 'insufficient_credits', 'a negative adjustment still never overdraws');
  });
});

describe('erasure and pending Stripe events (item 12)', () => {
  it("a pack paid before the erasure, applied after it, is still granted to the account; the merchant's other metadata is gone", async () => {
    const accountId = uniqueId('acct');
    await fundedAccount(test, accountId, 0);
    await test.call('PUT', `/v1/accounts/${accountId}`, { email: `${accountId}@example.com`, name: 'Private Person' });
    const session = checkoutSession({
      mode: 'payment',
      customer: uniqueId('cus'),
      paymentIntent: uniqueId('pi'),
      packId: 'pack_1000',
      clientReference: accountId,
      metadata: { tally_account_id: accountId, tally_pack_id: 'pack_1000', buyer_note: 'call me on 555-0100' },
    });
    const paid = event('checkout.session.completed', session);
    assert.equal((await deliver(test, paid)).status, 200);
    assert.equal((await test.admin('DELETE', `/v1/accounts/${accountId}/personal-data`, { reason: 'the customer asked' })).status, 200);
    const stored = await test.database.db.query<{ metadata: Record<string, string> }>(
      `select payload->'data'->'object'->'metadata' as metadata from webhook_events where id = $1`,
      [paid.id],
    );
    assert.deepEqual(stored.rows[0]?.metadata, { tally_account_id: accountId, tally_pack_id: 'pack_1000' });
    await settleWebhooks(test);
    assert.equal((await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available, 1000);
  });
});
