import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { createTestApp, fundedAccount, ledgerFacts, startWithFakeStripe, stopWithFakeStripe, type TestApp } from '../helpers/app.js';
import { entitlementsCatalog } from '../helpers/entitlements-catalog.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, month, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

// Entitlements and recurring grants on real parallel connections and two Tally processes: the
// first calls of a day race and the day's grant is given once; a subscription deleted while
// spends race on the expensive meter lets none through once its event has committed, because the
// event takes the account's lock that every spend decides under (invariant 17).
let first: TestApp;
let second: TestApp;
let fake: FakeStripe;
before(async () => {
  ({ test: first, fake } = await startWithFakeStripe({ catalog: entitlementsCatalog(), poolSize: 40 }));
  second = await createTestApp({ catalog: entitlementsCatalog(), poolSize: 40, database: first.database });
});
after(async () => {
  await second.close();
  await stopWithFakeStripe(first, fake);
});

const gpt5 = 'openai/gpt-5';
const gpt5Usage = { input_tokens: 1000, cached_input_tokens: 0, output_tokens: 1000 };
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

it('gives one recurring grant for 50 parallel first calls of a day (reads, spends, holds) on two processes', async () => {
  await fundedAccount(first, 'race-daily', 0);
  const calls = Array.from({ length: 50 }, (_, index) => {
    const tally = index % 2 === 0 ? first : second;
    if (index % 3 === 0) return tally.call('GET', '/v1/accounts/race-daily/balance');
    if (index % 3 === 1) return tally.call('POST', '/v1/accounts/race-daily/usage', { amount: 1, idempotency_key: `d-${index}` });
    return tally.call('POST', '/v1/accounts/race-daily/holds', { amount: 1, idempotency_key: `d-${index}` });
  });
  const answers = await Promise.all(calls);
  assert.ok(
    answers.every((answer) => answer.status === 200 || answer.status === 201),
    JSON.stringify(answers.filter((answer) => answer.status >= 300)),
  );
  const { rows } = await first.database.db.query<{ grants: number; credits: number }>(
    "select count(*)::int as grants, sum(amount)::int as credits from grants where account_id = 'race-daily' and source = 'recurring'",
  );
  assert.deepEqual(rows[0], { grants: 1, credits: 50 });
  // 33 spends and holds of 1 credit each, all from the one grant of 50.
  const spends = answers.filter((answer) => 'entry_id' in answer.body || 'hold_id' in answer.body).length;
  assert.equal(spends, 33);
  const facts = await ledgerFacts(first, 'race-daily');
  assert.deepEqual([facts.available, facts.entry_sum], [50 - spends, 50 - spends]);
});

/** A plus subscriber (every meter) with credits for many gpt-5 calls. */
async function plusSubscriber() {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  await fundedAccount(first, accountId, 100_000);
  await deliver(
    first,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
  );
  const object = subscription({ id: subscriptionId, customer, status: 'active', price: 'price_plus_monthly', start: t0, end: t0 + month });
  await deliver(first, event('customer.subscription.created', object, { created: 1_900_000_000 }));
  await settleWebhooks(first);
  const deleted = event('customer.subscription.deleted', { ...object, status: 'canceled' }, { created: 1_900_000_100 });
  return { accountId, deleted };
}

const spendGpt5 = (tally: TestApp, accountId: string, key: string) =>
  tally.call('POST', `/v1/accounts/${accountId}/usage`, { meter: gpt5, quantities: gpt5Usage, idempotency_key: key });

it('lets no spend on the expensive meter through after the deleted subscription commits, however the spends race', async () => {
  const { accountId, deleted } = await plusSubscriber();
  await deliver(first, deleted);
  const racing = Array.from({ length: 40 }, (_, index) => spendGpt5(index % 2 === 0 ? first : second, accountId, `race-${index}`));
  const [, ...answers] = await Promise.all([settleWebhooks(first), ...racing]);
  assert.ok(
    answers.every((answer) => answer.status === 200 || answer.status === 403),
    JSON.stringify(answers.map((a) => a.status)),
  );
  const after = await Promise.all(
    Array.from({ length: 20 }, (_, index) => spendGpt5(index % 2 === 0 ? first : second, accountId, `after-${index}`)),
  );
  assert.deepEqual(
    after.map((answer) => [answer.status, answer.body.error?.code]),
    after.map(() => [403, 'meter_not_entitled']),
  );
  // Each accepted spend wrote its entry; each refusal only its request key.
  const accepted = answers.filter((answer) => answer.status === 200).length;
  const { rows } = await first.database.db.query<{ entries: number; refusals: number }>(
    `select (select count(*)::int from entries where account_id = $1 and meter = $2) as entries,
       (select count(*)::int from request_keys where account_id = $1 and status_code = 403) as refusals`,
    [accountId, gpt5],
  );
  assert.deepEqual(rows[0], { entries: accepted, refusals: 60 - accepted });
  const facts = await ledgerFacts(first, accountId);
  assert.equal(facts.available, facts.entry_sum);
});

it("applies a subscription's event under the account's lock, so a spend decides wholly before or wholly after it", async () => {
  const { accountId, deleted } = await plusSubscriber();
  await deliver(first, deleted);
  const client = await first.database.db.pool.connect();
  try {
    await client.query('begin');
    // A spend in progress holds the account's row lock.
    await client.query('select 1 from accounts where id = $1 for update', [accountId]);
    let applied = false;
    const applying = settleWebhooks(first).then(() => {
      applied = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 400));
    assert.equal(applied, false, 'the event waits for the spend that holds the lock');
    const { rows } = await first.database.db.query<{ status: string }>('select status from subscriptions where account_id = $1', [
      accountId,
    ]);
    assert.deepEqual(rows, [{ status: 'active' }]);
    await client.query('commit');
    await applying;
  } finally {
    client.release();
  }
  const refused = await spendGpt5(second, accountId, 'after-lock');
  assert.deepEqual([refused.status, refused.body.error.code], [403, 'meter_not_entitled']);
});
