import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  createTestApp,
  fundedAccount,
  ledgerFacts,
  settleEvents,
  startWithFakeStripe,
  stopWithFakeStripe,
  type TestApp,
} from '../helpers/app.js';
import { entitlementsCatalog } from '../helpers/entitlements-catalog.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, month, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

// Entitlements over HTTP and through Stripe's subscription events: which plan an account is on
// (its subscription's, several items' union, a trial, the free plan, or none), what
// GET /v1/accounts/{id}/entitlements answers, entitlements.changed when that changes, and the
// 403 meter_not_entitled that a priced spend, hold or quote on another meter gets, writing nothing.

const mini = 'openai/gpt-5-mini';
const gpt5 = 'openai/gpt-5';
const images = 'images/generate';
const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

let test: TestApp;
let fake: FakeStripe;
before(async () => ({ test, fake } = await startWithFakeStripe({ catalog: entitlementsCatalog() })));
after(() => stopWithFakeStripe(test, fake));

let keyCount = 0;
const key = (): string => `e${(keyCount += 1)}`;
const entitlementsOf = async (accountId: string) => (await test.call('GET', `/v1/accounts/${accountId}/entitlements`)).body;
const usage = { input_tokens: 1000, output_tokens: 1000 };
const gpt5Usage = { input_tokens: 1000, cached_input_tokens: 0, output_tokens: 1000 };

/** An account linked to a Stripe customer, with its subscription mirrored in the given state. */
async function subscribed(status: string, prices: string[], created = 1_900_000_000) {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
  );
  const state = { accountId, customer, subscriptionId };
  await changeSubscription(state, 'customer.subscription.created', status, prices, created);
  return state;
}

async function changeSubscription(
  state: { customer: string; subscriptionId: string },
  type: string,
  status: string,
  prices: string[],
  created: number,
): Promise<void> {
  const object = subscription({
    id: state.subscriptionId,
    customer: state.customer,
    status,
    price: prices[0] ?? 'price_plus_monthly',
    start: t0,
    end: t0 + month,
    trialEnd: status === 'trialing' ? t0 + 7 * 86400 : null,
  });
  const first = object.items.data[0];
  object.items.data = prices.map((price, index) => ({ ...first, id: `si_${index}`, price: { ...first.price, id: price } }));
  await deliver(test, event(type, object, { created }));
  await settleWebhooks(test);
}

async function eventsOf(accountId: string, type: string) {
  await settleEvents(test);
  const { rows } = await test.database.db.query<{ data: Record<string, unknown> }>(
    'select data from events where account_id = $1 and type = $2 order by sequence',
    [accountId, type],
  );
  return rows.map((row) => row.data);
}

/** Everything a refusal must leave alone (its request key aside). */
async function written(accountId: string) {
  const facts = await ledgerFacts(test, accountId);
  const { rows } = await test.database.db.query<{ holds: number; carry: string; grants: number }>(
    `select (select count(*)::int from holds where account_id = $1) as holds,
       (select count(*)::int from grants where account_id = $1) as grants,
       (select carry::text from accounts where id = $1) as carry`,
    [accountId],
  );
  return { ...facts, ...rows[0] };
}

describe("an account's plan and entitlements", () => {
  it('is the free plan for an account without a subscription, answered in full', async () => {
    await fundedAccount(test, 'e-free', 0);
    assert.deepEqual(await entitlementsOf('e-free'), {
      plan_id: 'free',
      source: 'free',
      meters: [mini],
      features: { projects: 1 },
      rate_card: { id: 'standard', version: 1 },
      recurring_grants: [{ plan_id: 'free', credits: 50, every: 'day' }],
    });
  });

  it("is the subscription's plan while active, with its card, and the trial's while trialing", async () => {
    const active = await subscribed('active', ['price_plus_monthly']);
    const answer = await entitlementsOf(active.accountId);
    assert.deepEqual(
      { plan_id: answer.plan_id, source: answer.source, meters: answer.meters, features: answer.features, rate_card: answer.rate_card },
      {
        plan_id: 'plus',
        source: 'subscription',
        meters: 'all',
        features: { projects: 10, custom_agents: true },
        rate_card: { id: 'standard', version: 1 },
      },
    );
    const trial = await subscribed('trialing', ['price_pro_monthly']);
    const trialAnswer = await entitlementsOf(trial.accountId);
    assert.deepEqual(
      [trialAnswer.plan_id, trialAnswer.source, trialAnswer.meters, trialAnswer.rate_card.id],
      ['pro', 'trial', [gpt5], 'volume'],
    );
  });

  it('is the union of several plan items, the item with the most credits naming the plan and the card', async () => {
    const both = await subscribed('active', ['price_starter_monthly', 'price_pro_monthly']);
    assert.deepEqual(await entitlementsOf(both.accountId), {
      plan_id: 'pro',
      source: 'subscription',
      meters: [images, gpt5, mini],
      // The larger number and true win; a string is the plan with the most credits'.
      features: { projects: 5, custom_agents: true, support: 'phone' },
      rate_card: { id: 'volume', version: 1 },
      recurring_grants: [],
    });
  });

  it('goes back to the free plan when the subscription is canceled or unpaid, writing entitlements.changed each time', async () => {
    const state = await subscribed('active', ['price_plus_monthly']);
    await changeSubscription(state, 'customer.subscription.updated', 'past_due', ['price_plus_monthly'], 1_900_000_100);
    assert.equal((await entitlementsOf(state.accountId)).plan_id, 'plus', 'past_due keeps the plan');
    await changeSubscription(state, 'customer.subscription.deleted', 'canceled', ['price_plus_monthly'], 1_900_000_200);
    assert.equal((await entitlementsOf(state.accountId)).source, 'free');
    const changes = await eventsOf(state.accountId, 'entitlements.changed');
    assert.deepEqual(
      changes.map((change) => [change.plan_id, change.source, change.meters, change.previous]),
      [
        ['plus', 'subscription', 'all', { plan_id: 'free', source: 'free' }],
        ['free', 'free', [mini], { plan_id: 'plus', source: 'subscription' }],
      ],
    );
  });

  it('writes entitlements.changed when a trial ends in a paid subscription, and not for an incomplete one', async () => {
    const state = await subscribed('incomplete', ['price_plus_monthly']);
    assert.equal((await entitlementsOf(state.accountId)).source, 'free');
    assert.deepEqual(await eventsOf(state.accountId, 'entitlements.changed'), []);
    await changeSubscription(state, 'customer.subscription.updated', 'trialing', ['price_plus_monthly'], 1_900_000_100);
    await changeSubscription(state, 'customer.subscription.updated', 'active', ['price_plus_monthly'], 1_900_000_200);
    const changes = await eventsOf(state.accountId, 'entitlements.changed');
    assert.deepEqual(
      changes.map((change) => [change.source, change.previous]),
      [
        ['trial', { plan_id: 'free', source: 'free' }],
        ['subscription', { plan_id: 'plus', source: 'trial' }],
      ],
    );
  });

  it('refuses an unknown account with 404 account_not_found', async () => {
    const answer = await test.call('GET', '/v1/accounts/e-nobody/entitlements');
    assert.equal(answer.status, 404);
    assert.equal(answer.body.error.code, 'account_not_found');
  });

  it('is none, with every meter, for an account without a subscription when the catalog has no free plan', async () => {
    const plain = await createTestApp();
    try {
      await fundedAccount(plain, 'e-none', 0);
      const answer = (await plain.call('GET', '/v1/accounts/e-none/entitlements')).body;
      assert.deepEqual(answer, {
        plan_id: null,
        source: 'none',
        meters: 'all',
        features: {},
        rate_card: { id: 'standard', version: 1 },
        recurring_grants: [],
      });
    } finally {
      await plain.close();
    }
  });
});

describe('a spend on a meter outside the entitlements', () => {
  it('is 403 meter_not_entitled {meter, plan_id} for a priced usage, changing nothing, and replays as such', async () => {
    await fundedAccount(test, 'e-spend', 1000);
    const before = await written('e-spend');
    const body = { meter: gpt5, quantities: gpt5Usage, idempotency_key: key() };
    const refused = await test.call('POST', '/v1/accounts/e-spend/usage', body);
    assert.equal(refused.status, 403, JSON.stringify(refused.body));
    assert.deepEqual(
      { code: refused.body.error.code, meter: refused.body.error.meter, plan_id: refused.body.error.plan_id },
      { code: 'meter_not_entitled', meter: gpt5, plan_id: 'free' },
    );
    assert.deepEqual(await written('e-spend'), before);
    const replay = await test.call('POST', '/v1/accounts/e-spend/usage', body);
    assert.deepEqual([replay.status, replay.body.error.code, replay.body.error.replayed], [403, 'meter_not_entitled', true]);
  });

  it('is 403 for a priced hold, and writes no hold', async () => {
    const before = await written('e-spend');
    const refused = await test.call('POST', '/v1/accounts/e-spend/holds', {
      meter: images,
      quantities: { images: 1 },
      idempotency_key: key(),
    });
    assert.deepEqual([refused.status, refused.body.error.code, refused.body.error.meter], [403, 'meter_not_entitled', images]);
    assert.deepEqual(await written('e-spend'), before);
  });

  it('is 403 in a batch for that event only, answered as its single call, while the rest spend', async () => {
    // The batch sends an account with a priced event on a meter outside its plan one event at a
    // time (tally_batch_entitlements), so that event is refused as a single spend would be and
    // its other events spend; an account without one is decided at once beside it.
    await fundedAccount(test, 'e-batch', 1000);
    await fundedAccount(test, 'e-batch-other', 1000);
    const events = [
      { account_id: 'e-batch', amount: 5, idempotency_key: key() },
      { account_id: 'e-batch', meter: gpt5, quantities: gpt5Usage, idempotency_key: key() },
      { account_id: 'e-batch-other', meter: mini, quantities: usage, idempotency_key: key() },
      { account_id: 'e-batch', meter: mini, quantities: usage, idempotency_key: key() },
    ];
    const answer = await test.call('POST', '/v1/usage/batch', { events });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const results = answer.body.results as { status: number; error?: { code: string; meter?: string } }[];
    assert.deepEqual(
      results.map((result) => [result.status, result.error?.code, result.error?.meter]),
      [
        [200, undefined, undefined],
        [403, 'meter_not_entitled', gpt5],
        [200, undefined, undefined],
        [200, undefined, undefined],
      ],
    );
    const single = await test.call('POST', '/v1/accounts/e-batch/usage', {
      meter: gpt5,
      quantities: gpt5Usage,
      idempotency_key: events[1]?.idempotency_key,
    });
    assert.deepEqual(single.body.error, { ...results[1]?.error, replayed: true }, "the same refusal, stored as the key's outcome");
  });

  it('is answered by a quote as reason meter_not_entitled, writing nothing', async () => {
    const before = await written('e-spend');
    const quote = await test.call('POST', '/v1/accounts/e-spend/quote', { meter: gpt5, quantities: gpt5Usage });
    assert.equal(quote.status, 200, JSON.stringify(quote.body));
    assert.deepEqual([quote.body.allowed, quote.body.reason], [false, 'meter_not_entitled']);
    const allowed = await test.call('POST', '/v1/accounts/e-spend/quote', { meter: mini, quantities: usage });
    assert.deepEqual([allowed.body.allowed, allowed.body.reason], [true, undefined]);
    assert.deepEqual(await written('e-spend'), before);
  });

  it('leaves spends on an entitled meter and plain amounts unrestricted', async () => {
    const priced = await test.call('POST', '/v1/accounts/e-spend/usage', { meter: mini, quantities: usage, idempotency_key: key() });
    assert.equal(priced.status, 200, JSON.stringify(priced.body));
    const plain = await test.call('POST', '/v1/accounts/e-spend/usage', { amount: 5, idempotency_key: key() });
    assert.equal(plain.status, 200, JSON.stringify(plain.body));
    const hold = await test.call('POST', '/v1/accounts/e-spend/holds', { amount: 5, idempotency_key: key() });
    assert.equal(hold.status, 201, JSON.stringify(hold.body));
  });

  it('applies a downgrade to the next spend after its event: gpt-5 allowed on plus, refused once back on free', async () => {
    const state = await subscribed('active', ['price_plus_monthly']);
    await test.admin('POST', `/v1/accounts/${state.accountId}/grants`, {
      amount: 100,
      source: 'promo',
      reason: 'test',
      idempotency_key: key(),
    });
    const allowed = await test.call('POST', `/v1/accounts/${state.accountId}/usage`, {
      meter: gpt5,
      quantities: gpt5Usage,
      idempotency_key: key(),
    });
    assert.equal(allowed.status, 200, JSON.stringify(allowed.body));
    await changeSubscription(state, 'customer.subscription.deleted', 'canceled', ['price_plus_monthly'], 1_900_000_100);
    const refused = await test.call('POST', `/v1/accounts/${state.accountId}/usage`, {
      meter: gpt5,
      quantities: gpt5Usage,
      idempotency_key: key(),
    });
    assert.deepEqual([refused.status, refused.body.error.plan_id], [403, 'free']);
  });
});
