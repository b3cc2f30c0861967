import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, afterEach, before, describe, it } from 'node:test';
import pg from 'pg';
import {
  AccountNotFound,
  AdjustmentExceedsLimit,
  CaptureExceedsHold,
  EndpointNotFound,
  EventNotFound,
  Forbidden,
  GrantExceedsLimit,
  HoldNotFound,
  HoldNotPending,
  IdempotencyConflict,
  InsufficientCredits,
  InvalidRequest,
  NoPaymentMethod,
  PackNotFound,
  PlanNotFound,
  RateCardNotFound,
  ReconciliationRunning,
  SpendLimitExceeded,
  StripeError,
  TallyClient,
  TallyConnectionError,
  TallyError,
  TrialNotEligible,
  Unauthorized,
  UnknownMeter,
  verifyEvent,
  type Entry,
  type FetchFunction,
  type MetersOf,
  type Rates,
} from '../../client/src/index.js';
import { adminKey, appKey, settleEvents } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { ConformanceChecker } from '../helpers/openapi-conformance.js';
import { publishedDocument, serveTestApp, type ServedApp } from '../helpers/served-app.js';
import { event, signedHeader, subscription, uniqueId } from '../helpers/stripe-events.js';

/**
 * Issue 13: @tally/client against a real Tally (real PostgreSQL, real HTTP). Every method is
 * called; a spend whose answer is lost after Tally committed it is retried with the same key and
 * spends once; a generated key (UUIDv7) is reused by every retry; 503 database_unavailable is
 * retried after Retry-After; 4xx never are; every refusal is its own typed error. Every answer
 * the client gets also passes through the OpenAPI conformance check.
 */
let served: ServedApp;
let fake: FakeStripe;
let checker: ConformanceChecker;
/** The example catalog's meters, typed: a priced call naming another meter or dimension does not compile. */
const exampleMeters = [
  { id: 'openai/gpt-5', dimensions: ['input_tokens', 'cached_input_tokens', 'output_tokens'] },
  { id: 'openai/gpt-5-mini', dimensions: ['input_tokens', 'output_tokens'] },
  { id: 'anthropic/claude-sonnet-4.5', dimensions: ['input_tokens', 'cache_read_tokens', 'output_tokens'] },
  { id: 'images/generate', dimensions: ['images'] },
] as const;
type ExampleMeters = MetersOf<typeof exampleMeters>;

let app: TallyClient<ExampleMeters>;
let admin: TallyClient<ExampleMeters>;
/** The waits the transport asked for, instead of waiting them. */
let waits: number[] = [];

const noWait = async (milliseconds: number): Promise<void> => {
  waits.push(milliseconds);
};
const clientWith = (fetch: FetchFunction, options: { apiKey?: string; timeoutMilliseconds?: number } = {}) =>
  new TallyClient<ExampleMeters>({
    baseUrl: `${served.url}/`,
    apiKey: options.apiKey ?? appKey,
    fetch,
    sleep: noWait,
    timeoutMilliseconds: options.timeoutMilliseconds,
  });

before(async () => {
  fake = await new FakeStripe().start();
  // Events are delivered to a receiver on 127.0.0.1, which only TALLY_EVENTS_ALLOW_PRIVATE allows.
  served = await serveTestApp({ stripeApiBase: fake.url, grantCreditsMax: 1_000_000, eventDestinations: { allowPrivate: true } });
  checker = new ConformanceChecker((await publishedDocument(served)) as never);
  app = clientWith(checker.fetch);
  admin = clientWith(checker.fetch, { apiKey: adminKey });
});
after(async () => {
  await served.close();
  await fake.stop();
});
afterEach(() => {
  waits = [];
  assert.deepEqual(checker.failures.splice(0), [], 'every answer the client got is described by /openapi.json');
});

/** A fresh account with `credits` granted through the client. */
async function funded(credits: number): Promise<string> {
  const accountId = uniqueId('client');
  await app.accounts.upsert(accountId, { email: `${accountId}@example.com` });
  if (credits > 0) await admin.admin.grant(accountId, { amount: credits, source: 'promo', reason: 'test funding' });
  return accountId;
}

async function usageEntries(accountId: string): Promise<number> {
  const { rows } = await served.database.db.query<{ count: number }>(
    `select count(*)::int as count from entries where account_id = $1 and kind = 'usage'`,
    [accountId],
  );
  return rows[0]?.count ?? 0;
}

/** The account's whole ledger through the client, newest first. */
async function ledgerEntries(accountId: string): Promise<Entry[]> {
  const entries: Entry[] = [];
  for await (const page of app.ledger(accountId)) entries.push(...page.entries);
  return entries;
}

const uuidV7 = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

/** The idempotency key in a request's JSON body. */
async function keyOf(request: Request): Promise<string> {
  return ((await request.clone().json()) as { idempotency_key: string }).idempotency_key;
}

async function expectTyped<T extends TallyError>(
  pending: Promise<unknown>,
  errorClass: new (...args: never[]) => T,
  status: number,
  code: string,
): Promise<T> {
  const error = await pending.then(
    () => assert.fail(`expected ${errorClass.name}`),
    (caught: unknown) => caught,
  );
  assert.ok(error instanceof errorClass, `${(error as Error).name}: ${(error as Error).message} is a ${errorClass.name}`);
  assert.ok(error instanceof TallyError);
  assert.equal(error.status, status);
  assert.equal(error.code, code);
  assert.equal(error.error.code, code);
  return error;
}

describe('@tally/client against a real Tally', () => {
  it('calls accounts, balance, usage (single and batch), holds and the ledger', async () => {
    const accountId = await funded(1000);
    const upserted = await app.accounts.upsert(accountId, { name: 'Client Test', metadata: { tier: 'gold' } });
    assert.equal(upserted.name, 'Client Test');
    const account = await app.accounts.get(accountId);
    assert.equal(account.balance.available, 1000);
    assert.equal(account.grants[0]?.remaining, 1000);
    assert.deepEqual(await app.balance(accountId), { account_id: accountId, available: 1000, held: 0, debt: 0 });
    // The example catalog has no free plan: an account without a subscription may use every meter.
    const entitlements = await app.entitlements(accountId);
    assert.deepEqual([entitlements.plan_id, entitlements.source, entitlements.meters], [null, 'none', 'all']);
    await expectTyped(app.entitlements(uniqueId('missing')), AccountNotFound, 404, 'account_not_found');

    const spent = await app.usage(accountId, { amount: 30, description: 'one run' });
    assert.deepEqual(
      { amount: spent.amount, available: spent.available, replayed: spent.replayed },
      { amount: 30, available: 970, replayed: false },
    );
    const results = await app.usageBatch([
      { account_id: accountId, amount: 5 },
      { account_id: accountId, amount: 1_000_000 },
    ]);
    assert.deepEqual(
      results.map((result) => result.status),
      [200, 402],
    );

    const hold = await app.holds.create(accountId, { amount: 100, expires_in_seconds: 600 });
    assert.equal(hold.available, 865);
    assert.deepEqual(await app.holds.capture(hold.hold_id, 60), { captured: 60, released: 40, available: 905 });
    const second = await app.holds.create(accountId, { amount: 10 });
    assert.deepEqual(await app.holds.void(second.hold_id), { released: 10, available: 905 });
    const third = await app.holds.create(accountId, { amount: 5 });
    assert.equal((await app.holds.capture(third.hold_id)).captured, 5);

    const pages = [];
    for await (const page of app.ledger(accountId, { limit: 3 })) pages.push(page);
    const entries = pages.flatMap((page) => page.entries);
    assert.ok(pages.length >= 3, 'the ledger came in several pages');
    assert.equal(pages.at(-1)?.next_cursor, null);
    const whole = (await app.ledger(accountId, { limit: 500 }).next()).value;
    assert.deepEqual(entries, whole?.entries, 'the pages together are the ledger, newest first, each entry once');
    assert.equal(entries.at(-1)?.kind, 'grant');
    assert.equal(entries.filter((entry) => entry.kind === 'usage').length, 2);
  });

  it('calls checkout, trial eligibility, the client reference, auto top-up, the threshold and the events feed', async () => {
    const accountId = await funded(100);
    const session = await app.checkout(accountId, {
      pack_id: 'pack_1000',
      success_url: 'https://app.example/ok',
      cancel_url: 'https://app.example/no',
    });
    assert.match(session.session_id, /^cs_/);
    assert.deepEqual(await app.trialEligibility(accountId, { email: 'fresh@example.com' }), { eligible: true });
    assert.match(await app.clientReference(accountId), /^t1_/);
    const topUp = await app.autoTopUp(accountId, { enabled: false, threshold: 10, pack_id: 'pack_1000', max_per_month: 1 });
    assert.equal(topUp.enabled, false);
    assert.equal((await app.lowBalanceThreshold(accountId, 50)).low_balance_threshold, 50);
    assert.deepEqual(await app.getAutoTopUp(accountId), topUp);
    assert.equal((await app.getLowBalanceThreshold(accountId)).low_balance_threshold, 50);
    await app.usage(accountId, { amount: 60 });

    await settleEvents(served);
    const seen = [];
    for await (const tallyEvent of app.events({ accountId, limit: 1 })) seen.push(tallyEvent);
    assert.deepEqual(
      seen.map((tallyEvent) => tallyEvent.type),
      ['grant.created', 'balance.low'],
    );
    const sequence = seen[0]?.sequence ?? 0;
    const resumed = [];
    for await (const tallyEvent of app.events({ accountId, after: sequence })) resumed.push(tallyEvent.type);
    assert.deepEqual(resumed, ['balance.low'], 'reading on from a sequence skips what was read');
  });

  it('calls every admin method', async () => {
    const accountId = await funded(0);
    const grant = await admin.admin.grant(accountId, { amount: 500, source: 'admin', reason: 'welcome', idempotency_key: 'welcome-1' });
    assert.equal(grant.remaining, 500);
    assert.equal(
      (await admin.admin.grant(accountId, { amount: 500, source: 'admin', reason: 'welcome', idempotency_key: 'welcome-1' })).replayed,
      true,
    );
    const adjustment = await admin.admin.adjust(accountId, { amount: -20, reason: 'ticket 12' });
    assert.equal(adjustment.balance_after, 480);
    assert.equal((await admin.admin.export(accountId)).grants.length, 1);
    assert.equal((await admin.admin.erase(accountId, 'asked')).erased.email, true);
    assert.equal((await admin.admin.reconcile()).finding_count, 0);
    assert.ok((await admin.admin.reconciliations(5)).length >= 1);

    const stripeEvent = event(
      'customer.subscription.updated',
      subscription({ id: uniqueId('sub'), customer: uniqueId('cus'), status: 'active', price: 'price_plus_monthly', start: 1, end: 2 }),
    );
    const payload = JSON.stringify(stripeEvent);
    const delivered = await fetch(`${served.url}/webhooks/stripe`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signedHeader(payload) },
      body: payload,
    });
    assert.equal(delivered.status, 200);
    assert.equal((await admin.admin.webhookEvents({ limit: 5 }))[0]?.id, stripeEvent.id);
    assert.equal((await admin.admin.replay(stripeEvent.id)).event_id, stripeEvent.id);
    assert.ok(Array.isArray(await admin.admin.alerts(10)));
    assert.equal((await admin.admin.stripeBreaker()).state, 'closed');
    assert.equal((await admin.admin.accounts({ search: accountId })).accounts[0]?.id, accountId);
    assert.equal((await admin.admin.creditHistory({ days: 2 })).length, 2);

    const endpoint = await admin.admin.webhookEndpoints.create({ url: 'https://hooks.example/tally' });
    assert.match(endpoint.secret, /^whsec_/);
    assert.ok((await admin.admin.webhookEndpoints.list()).some((listed) => listed.id === endpoint.id));
    assert.equal((await admin.admin.webhookEndpoints.get(endpoint.id)).url, 'https://hooks.example/tally');
    assert.equal((await admin.admin.webhookEndpoints.enable(endpoint.id)).status, 'enabled');
    assert.deepEqual(await admin.admin.webhookEndpoints.delete(endpoint.id), { id: endpoint.id, deleted: true });
  });

  it('sets and reads spend limits, refuses a spend past one as SpendLimitExceeded with its window, limit and spent, and refuses bad limits', async () => {
    const accountId = await funded(100);
    const set = await app.limits.set(accountId, { per_day: 50, per_month: 80 });
    assert.deepEqual(
      { per_day: set.per_day, per_month: set.per_month, spent: set.spent },
      { per_day: 50, per_month: 80, spent: { day: 0, month: 0 } },
    );
    await app.usage(accountId, { amount: 40 });
    const refused = await expectTyped(app.usage(accountId, { amount: 20 }), SpendLimitExceeded, 402, 'spend_limit_exceeded');
    assert.deepEqual({ window: refused.window, limit: refused.limit, spent: refused.spent }, { window: 'day', limit: 50, spent: 40 });
    assert.ok(Date.parse(refused.resetsAt) > Date.now(), 'the day window starts again later');
    const read = await app.limits.get(accountId);
    assert.deepEqual(
      { per_day: read.per_day, per_month: read.per_month, spent: read.spent },
      { per_day: 50, per_month: 80, spent: { day: 40, month: 40 } },
    );
    assert.equal((await app.balance(accountId)).available, 60, 'the refused spend changed nothing');

    // Without the day's limit, the month's is the one passed; a field left out keeps its limit.
    assert.deepEqual((await app.limits.set(accountId, { per_day: null })).per_month, 80);
    const monthly = await expectTyped(app.holds.create(accountId, { amount: 41 }), SpendLimitExceeded, 402, 'spend_limit_exceeded');
    assert.deepEqual({ window: monthly.window, limit: monthly.limit, spent: monthly.spent }, { window: 'month', limit: 80, spent: 40 });

    const invalid = await expectTyped(app.limits.set(accountId, { per_day: -1 }), InvalidRequest, 400, 'invalid_request');
    assert.equal(invalid.field, 'per_day');
    await expectTyped(app.limits.set(uniqueId('nobody'), { per_day: 5 }), AccountNotFound, 404, 'account_not_found');
    await expectTyped(app.limits.get(uniqueId('nobody')), AccountNotFound, 404, 'account_not_found');
  });

  it('spends, holds, captures, batches and quotes by meter and quantities, each answer naming its cost and rate card version', async () => {
    // Rates of the example catalog's standard card (version 1): gpt-5-mini input 0.000025,
    // output 0.0002; gpt-5 input 0.000125, output 0.001; images 4 per image.
    const catalog = JSON.parse(readFileSync('plans.example.json', 'utf8')) as {
      meters: unknown;
      rate_cards: { id: string; rates: unknown }[];
    };
    assert.deepEqual(catalog.meters, exampleMeters, "the test's typed meters are the example catalog's");
    const standard = (await app.rateCards()).find((card) => card.id === 'standard');
    assert.deepEqual(
      { version: standard?.version, rates: standard?.rates, next: standard?.next },
      { version: 1, rates: catalog.rate_cards.find((card) => card.id === 'standard')?.rates, next: null },
    );
    const accountId = await funded(100);
    const version1 = { id: 'standard', version: 1 };
    const mini = 'openai/gpt-5-mini';

    // 5000 input and 1000 output tokens cost 0.125 + 0.2 = 0.325: no credit yet.
    const quote = await app.quote(accountId, { meter: mini, quantities: { input_tokens: 5000, output_tokens: 1000 } });
    assert.deepEqual(quote, { amount: 0, cost: '0.325', rate_card: version1, available: 100, allowed: true });
    const spent = await app.usage(accountId, { meter: mini, quantities: { input_tokens: 5000, output_tokens: 1000 } });
    const cost: string = spent.cost; // A priced spend's answer types its cost and version as present.
    assert.deepEqual(
      { amount: spent.amount, available: spent.available, cost, rate_card: spent.rate_card },
      { amount: 0, available: 100, cost: '0.325', rate_card: version1 },
    );
    // 8000 input and 2000 output tokens of gpt-5 cost 1 + 2 = 3; with the carry 0.325, 3 credits.
    const second = await app.usage(accountId, { meter: 'openai/gpt-5', quantities: { input_tokens: 8000, output_tokens: 2000 } });
    assert.deepEqual([second.amount, second.available, Number(second.cost)], [3, 97, 3]);
    assert.deepEqual(await app.quote(accountId, { amount: 5 }), { amount: 5, cost: '5', rate_card: null, available: 97, allowed: true });

    // A model call held by its max_tokens (8000 output: 0.1 + 1.6 = 1.7, so 2 credits held),
    // captured by what it used (3000 output: 0.1 + 0.6 = 0.7; with the carry 0.325, 1 credit).
    const hold = await app.holds.create(accountId, { meter: mini, quantities: { input_tokens: 4000, output_tokens: 8000 } });
    assert.deepEqual([hold.amount, hold.available, hold.cost, hold.rate_card], [2, 95, '1.7', version1]);
    const captured = await app.holds.capture<typeof mini>(hold.hold_id, { quantities: { input_tokens: 4000, output_tokens: 3000 } });
    assert.deepEqual(captured, { captured: 1, released: 1, available: 96, cost: '0.7', rate_card: version1 });

    // Used more than held: 10000 output tokens cost 2, above the 1 credit held.
    const small = await app.holds.create(accountId, { meter: mini, quantities: { output_tokens: 1000 } });
    assert.equal(small.amount, 1);
    const exceeds = await expectTyped(
      app.holds.capture(small.hold_id, { quantities: { output_tokens: 10_000 } }),
      CaptureExceedsHold,
      400,
      'capture_exceeds_hold',
    );
    assert.equal(exceeds.held, 1);
    await app.holds.void(small.hold_id);

    const results = await app.usageBatch([
      { account_id: accountId, meter: 'images/generate', quantities: { images: 2 } },
      { account_id: accountId, amount: 1 },
    ]);
    assert.deepEqual(
      results.map((result) => [result.status, 'cost' in result ? result.cost : undefined]),
      [
        [200, '8'],
        [200, undefined],
      ],
    );
    assert.equal((await app.balance(accountId)).available, 87);
    const newest = (await ledgerEntries(accountId)).find((entry) => entry.meter !== undefined);
    assert.deepEqual(
      { meter: newest?.meter, quantities: newest?.quantities, cost: newest?.cost, rate_card: newest?.rate_card, amount: newest?.amount },
      { meter: 'images/generate', quantities: { images: 2 }, cost: '8', rate_card: version1, amount: -8 },
    );
  });

  it('refuses a meter or dimension the catalog lacks as its typed error (and the typed client does not compile it), writing nothing', async () => {
    const accountId = await funded(50);
    const before = await usageEntries(accountId);
    const unknown = await expectTyped(
      // @ts-expect-error: the catalog has no meter openai/gpt-6.
      app.usage(accountId, { meter: 'openai/gpt-6', quantities: { input_tokens: 10 } }),
      UnknownMeter,
      400,
      'unknown_meter',
    );
    assert.equal(unknown.meter, 'openai/gpt-6');
    await expectTyped(
      // @ts-expect-error: the catalog has no meter openai/gpt-6.
      app.quote(accountId, { meter: 'openai/gpt-6', quantities: { output_tokens: 1 } }),
      UnknownMeter,
      400,
      'unknown_meter',
    );
    const dimension = await expectTyped(
      // @ts-expect-error: gpt-5-mini has no dimension images.
      app.holds.create(accountId, { meter: 'openai/gpt-5-mini', quantities: { images: 1 } }),
      InvalidRequest,
      400,
      'invalid_request',
    );
    assert.match(dimension.field, /^quantities/);
    const both = await expectTyped(
      // @ts-expect-error: a spend is credits or a meter, never both.
      app.usage(accountId, { amount: 1, meter: 'images/generate', quantities: { images: 1 } }),
      InvalidRequest,
      400,
      'invalid_request',
    );
    assert.match(both.field, /^(meter|quantities)$/);
    const fractional = await expectTyped(
      app.usage(accountId, { meter: 'images/generate', quantities: { images: 0.5 } }),
      InvalidRequest,
      400,
      'invalid_request',
    );
    assert.match(fractional.field, /^quantities/);
    assert.equal(await usageEntries(accountId), before, 'no refusal wrote an entry');
    assert.equal((await app.balance(accountId)).available, 50);
  });

  it('publishes rate card versions now or later and lists them newest first; a spend keeps the version in effect', async () => {
    const rates: Rates<ExampleMeters> = {
      'openai/gpt-5': { input_tokens: '0.0002', cached_input_tokens: '0.00002', output_tokens: '0.0016' },
      'openai/gpt-5-mini': { input_tokens: '0.00004', output_tokens: '0.0004' },
      'anthropic/claude-sonnet-4.5': { input_tokens: '0.0003', cache_read_tokens: '0.00003', output_tokens: '0.0015' },
      'images/generate': { images: '5' },
    };
    const later = new Date(served.clock.now().getTime() + 3_600_000).toISOString();
    const scheduled = await admin.admin.publishRateCard('standard', { rates, effective_at: later });
    assert.deepEqual([scheduled.id, scheduled.version, Date.parse(scheduled.effective_at)], ['standard', 2, Date.parse(later)]);
    const standard = (await app.rateCards()).find((card) => card.id === 'standard');
    assert.deepEqual([standard?.version, standard?.next?.version, standard?.next?.rates], [1, 2, rates]);
    const accountId = await funded(100);
    const spent = await app.usage(accountId, { meter: 'images/generate', quantities: { images: 1 } });
    assert.deepEqual([spent.amount, spent.rate_card], [4, { id: 'standard', version: 1 }], 'a version scheduled later prices nothing yet');

    const now = await admin.admin.publishRateCard('volume', { rates });
    assert.equal(now.version, 2);
    assert.equal(Date.parse(now.effective_at), served.clock.now().getTime(), 'without effective_at the version takes effect now');
    const versions = await admin.admin.rateCardVersions('volume');
    assert.deepEqual(
      versions.map((version) => version.version),
      [2, 1],
    );
    assert.deepEqual(versions[0]?.rates, rates);

    const past = new Date(served.clock.now().getTime() - 3_600_000).toISOString();
    const stale = await expectTyped(
      admin.admin.publishRateCard('volume', { rates, effective_at: past }),
      InvalidRequest,
      400,
      'invalid_request',
    );
    assert.equal(stale.field, 'effective_at');
    const { 'images/generate': _images, ...withoutImages } = rates;
    // @ts-expect-error: a card prices every meter.
    await expectTyped(admin.admin.publishRateCard('volume', { rates: withoutImages }), InvalidRequest, 400, 'invalid_request');
    await expectTyped(admin.admin.publishRateCard('premium', { rates }), RateCardNotFound, 404, 'rate_card_not_found');
    await expectTyped(admin.admin.rateCardVersions('premium'), RateCardNotFound, 404, 'rate_card_not_found');
    await expectTyped(app.admin.publishRateCard('volume', { rates }), Forbidden, 403, 'forbidden');
    assert.equal((await admin.admin.rateCardVersions('volume')).length, 2, 'no refusal published a version');

    served.clock.advanceSeconds(3601);
    const afterChange = await app.usage(accountId, { meter: 'images/generate', quantities: { images: 1 } });
    assert.deepEqual(
      [afterChange.amount, afterChange.rate_card],
      [5, { id: 'standard', version: 2 }],
      'the scheduled version prices once in effect',
    );
    assert.deepEqual(
      (await ledgerEntries(accountId)).map((entry) => entry.rate_card?.version),
      [2, 1, undefined],
      'the spend made before the change keeps version 1',
    );
  });

  it('retries a spend whose answer was lost after Tally committed it, with the same key: it spends once', async () => {
    const accountId = await funded(100);
    const keys: string[] = [];
    let dropped = false;
    const dropFirstAnswer = clientWith(async (request) => {
      keys.push(await keyOf(request));
      const response = await checker.fetch(request);
      if (!dropped) {
        dropped = true;
        // Tally answered (and committed); the connection drops before the answer arrives.
        await response.body?.cancel();
        throw new TypeError('fetch failed', { cause: Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }) });
      }
      return response;
    });
    const answer = await dropFirstAnswer.usage(accountId, { amount: 30 });
    assert.equal(keys.length, 2);
    assert.match(keys[0] ?? '', uuidV7, 'a UUIDv7 key was generated');
    assert.equal(keys[1], keys[0], 'the retry sent the same key');
    assert.equal(answer.replayed, true, 'the retry got the first answer back');
    assert.equal(answer.available, 70);
    assert.equal((await app.balance(accountId)).available, 70);
    assert.equal(await usageEntries(accountId), 1, 'one spend in the ledger');
    assert.equal(waits.length, 1);
  });

  it('retries after a timeout with the same key; the late first attempt and the retry spend once', async () => {
    const accountId = await funded(100);
    const keys: string[] = [];
    let late: Promise<Response> | undefined;
    const slowFirst = clientWith(
      async (request) => {
        keys.push(await keyOf(request));
        if (keys.length > 1) return checker.fetch(request);
        // The first attempt reaches Tally only after the client gave up on it.
        const copy = new Request(request.url, {
          method: request.method,
          headers: request.headers,
          body: await request.clone().arrayBuffer(),
        });
        late = sleep(300).then(() => checker.fetch(copy));
        return new Promise<Response>((_resolve, reject) => request.signal.addEventListener('abort', () => reject(request.signal.reason)));
      },
      { timeoutMilliseconds: 100 },
    );
    const answer = await slowFirst.usage(accountId, { amount: 25, idempotency_key: 'slow-1' });
    assert.deepEqual(keys, ['slow-1', 'slow-1']);
    assert.deepEqual(
      { amount: answer.amount, available: answer.available, replayed: answer.replayed },
      { amount: 25, available: 75, replayed: false },
    );
    const lateAnswer = (await (await late)?.json()) as { replayed: boolean; available: number };
    assert.deepEqual(
      { replayed: lateAnswer.replayed, available: lateAnswer.available },
      { replayed: true, available: 75 },
      'the late attempt got the first answer',
    );
    assert.equal((await app.balance(accountId)).available, 75);
    assert.equal(await usageEntries(accountId), 1);
  });

  it('retries 503 database_unavailable after Retry-After, with the same generated key', async () => {
    const accountId = await funded(100);
    const name = decodeURIComponent(new URL(served.database.url).pathname.slice(1));
    const server = new pg.Client({ connectionString: process.env.TALLY_TEST_SERVER_URL });
    await server.connect();
    try {
      await server.query(`alter database ${pg.escapeIdentifier(name)} allow_connections false`);
      await server.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [name]);
      await sleep(300);
      const keys: string[] = [];
      const statuses: number[] = [];
      const client = clientWith(async (request) => {
        keys.push(await keyOf(request));
        const response = await checker.fetch(request);
        statuses.push(response.status);
        // The database comes back while the client waits.
        if (response.status === 503) await server.query(`alter database ${pg.escapeIdentifier(name)} allow_connections true`);
        return response;
      });
      const answer = await client.usage(accountId, { amount: 10 });
      assert.equal(answer.available, 90);
      assert.deepEqual(statuses, [503, 200]);
      assert.equal(keys[1], keys[0]);
      assert.match(keys[0] ?? '', uuidV7);
      assert.ok((waits[0] ?? 0) >= 5000, `the wait honoured Retry-After: 5 (waited ${waits[0]} ms)`);
    } finally {
      await server.query(`alter database ${pg.escapeIdentifier(name)} allow_connections true`);
      await server.end();
    }
    assert.equal(await usageEntries(accountId), 1);
  });

  it('retries 503 database_busy after Retry-After, a capture too: its transaction rolled back', async () => {
    // Proves that a capture, sent again only when Tally surely did nothing, counts database_busy
    // as such: the statement that timed out rolled its transaction back.
    const accountId = await funded(100);
    const hold = await app.holds.create(accountId, { amount: 20 });
    let attempts = 0;
    const busyFirst = clientWith(async (request) => {
      attempts += 1;
      if (attempts > 1) return checker.fetch(request);
      const body = { error: { code: 'database_busy', message: 'the database is busy; retry shortly with the same idempotency key' } };
      return new Response(JSON.stringify(body), { status: 503, headers: { 'content-type': 'application/json', 'retry-after': '5' } });
    });
    const captured = await busyFirst.holds.capture(hold.hold_id, 15);
    assert.equal(attempts, 2);
    assert.deepEqual([captured.captured, captured.released], [15, 5]);
    assert.ok((waits[0] ?? 0) >= 5000, `the wait honoured Retry-After: 5 (waited ${waits[0]} ms)`);
  });

  it('gives up after a bounded number of attempts, naming the key to try again with', async () => {
    let attempts = 0;
    const unreachable = clientWith(async () => {
      attempts += 1;
      throw new TypeError('fetch failed');
    });
    const error = await unreachable.usage('nobody', { amount: 1, idempotency_key: 'offline-1' }).then(
      () => assert.fail('expected a connection error'),
      (caught: unknown) => caught,
    );
    assert.ok(error instanceof TallyConnectionError);
    assert.equal(error.attempts, 4);
    assert.equal(error.idempotencyKey, 'offline-1');
    assert.equal(attempts, 4);
    assert.equal(waits.length, 3);
    assert.ok(
      waits.every((wait, index) => wait <= 5000 && wait >= 100 * 2 ** index),
      `bounded exponential waits: ${waits}`,
    );
  });

  it('never retries a 4xx, and does not resend a capture whose answer was lost', async () => {
    const accountId = await funded(10);
    let attempts = 0;
    const counting = clientWith(async (request) => {
      attempts += 1;
      return checker.fetch(request);
    });
    const refused = await expectTyped(
      counting.usage(accountId, { amount: 11, idempotency_key: 'too-much' }),
      InsufficientCredits,
      402,
      'insufficient_credits',
    );
    assert.equal(refused.available, 10);
    assert.equal(refused.replayed, false);
    assert.equal(attempts, 1);
    const again = await expectTyped(
      counting.usage(accountId, { amount: 11, idempotency_key: 'too-much' }),
      InsufficientCredits,
      402,
      'insufficient_credits',
    );
    assert.equal(again.replayed, true, 'the key keeps its first answer');

    const hold = await app.holds.create(accountId, { amount: 5 });
    let captures = 0;
    const losing = clientWith(async (request) => {
      captures += 1;
      const response = await checker.fetch(request);
      await response.body?.cancel();
      throw new TypeError('fetch failed');
    });
    await assert.rejects(losing.holds.capture(hold.hold_id), TallyConnectionError);
    assert.equal(captures, 1, 'a capture is sent once');
    await expectTyped(app.holds.void(hold.hold_id), HoldNotPending, 409, 'hold_not_pending');
  });

  it('throws one typed error per refusal, carrying the error object and status', async () => {
    const accountId = await funded(100);
    await expectTyped(app.balance(uniqueId('missing')), AccountNotFound, 404, 'account_not_found');
    await app.usage(accountId, { amount: 1, idempotency_key: 'typed-1' });
    const conflict = await expectTyped(
      app.usage(accountId, { amount: 2, idempotency_key: 'typed-1' }),
      IdempotencyConflict,
      409,
      'idempotency_conflict',
    );
    assert.equal(conflict.idempotencyKey, 'typed-1');
    const invalid = await expectTyped(app.usage(accountId, { amount: -1 }), InvalidRequest, 400, 'invalid_request');
    assert.equal(invalid.field, 'amount');
    const hold = await app.holds.create(accountId, { amount: 10 });
    assert.equal((await expectTyped(app.holds.capture(hold.hold_id, 11), CaptureExceedsHold, 400, 'capture_exceeds_hold')).held, 10);
    await app.holds.void(hold.hold_id);
    assert.equal((await expectTyped(app.holds.void(hold.hold_id), HoldNotPending, 409, 'hold_not_pending')).holdStatus, 'voided');
    await expectTyped(app.holds.void('hold_999999999'), HoldNotFound, 404, 'hold_not_found');
    await expectTyped(clientWith(checker.fetch, { apiKey: 'wrong-key-0123456789' }).balance(accountId), Unauthorized, 401, 'unauthorized');
    await expectTyped(app.admin.export(accountId), Forbidden, 403, 'forbidden');
    const urls = { success_url: 'https://app.example/ok', cancel_url: 'https://app.example/no' };
    assert.equal(
      (
        await expectTyped(
          app.checkout(accountId, { plan_id: 'pro', interval: 'month', trial: true, ...urls }),
          TrialNotEligible,
          403,
          'trial_not_eligible',
        )
      ).reason,
      'plan_has_no_trial',
    );
    await expectTyped(app.checkout(accountId, { plan_id: 'nothing', interval: 'month', ...urls }), PlanNotFound, 404, 'plan_not_found');
    await expectTyped(
      app.autoTopUp(accountId, { enabled: true, threshold: 5, pack_id: 'pack_none', max_per_month: 1 }),
      PackNotFound,
      404,
      'pack_not_found',
    );
    await expectTyped(
      app.autoTopUp(accountId, { enabled: true, threshold: 5, pack_id: 'pack_1000', max_per_month: 1 }),
      NoPaymentMethod,
      409,
      'no_payment_method',
    );
    assert.equal(
      (
        await expectTyped(
          admin.admin.adjust(accountId, { amount: 200_000, reason: 'too much' }),
          AdjustmentExceedsLimit,
          400,
          'adjustment_exceeds_limit',
        )
      ).limit,
      100_000,
    );
    assert.equal(
      (
        await expectTyped(
          admin.admin.grant(accountId, { amount: 2_000_000, source: 'promo', reason: 'too much' }),
          GrantExceedsLimit,
          400,
          'grant_exceeds_limit',
        )
      ).limit,
      1_000_000,
    );
    await expectTyped(admin.admin.replay('evt_missing'), EventNotFound, 404, 'event_not_found');
    await expectTyped(admin.admin.webhookEndpoints.get('we_999999'), EndpointNotFound, 404, 'endpoint_not_found');
    const lock = new pg.Client({ connectionString: served.database.url });
    await lock.connect();
    try {
      await lock.query('select pg_advisory_lock(7316122452)');
      await expectTyped(admin.admin.reconcile(), ReconciliationRunning, 409, 'reconciliation_running');
    } finally {
      await lock.end();
    }
    fake.refusal = { status: 400, body: { error: { type: 'invalid_request_error', message: 'No such price' } } };
    try {
      await expectTyped(app.checkout(accountId, { pack_id: 'pack_10000', ...urls }), StripeError, 502, 'stripe_error');
    } finally {
      fake.refusal = undefined;
    }
  });

  it("verifies the events Tally POSTs to the app's endpoint (Standard Webhooks)", async () => {
    const bodies: { body: string; headers: Record<string, string | string[] | undefined> }[] = [];
    const receiver: Server = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        bodies.push({ body, headers: request.headers });
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    try {
      const endpoint = await admin.admin.webhookEndpoints.create({
        url: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}/tally`,
        event_types: ['grant.created'],
      });
      const accountId = await funded(42);
      await settleEvents(served);
      const deadline = Date.now() + 20_000;
      while (!bodies.some((delivery) => delivery.body.includes(accountId)) && Date.now() < deadline) {
        await served.parts.eventDelivery.deliverOnce();
        await sleep(50);
      }
      const delivery = bodies.find((candidate) => candidate.body.includes(accountId));
      assert.ok(delivery !== undefined, 'the event reached the endpoint');
      const verified = verifyEvent(delivery.body, delivery.headers, endpoint.secret);
      assert.equal(verified.type, 'grant.created');
      assert.equal(verified.account_id, accountId);
      assert.equal(verifyEvent(delivery.body, new Headers(delivery.headers as Record<string, string>), endpoint.secret).id, verified.id);
      assert.throws(() => verifyEvent(delivery.body.replace('42', '43'), delivery.headers, endpoint.secret), 'a changed body fails');
      assert.throws(
        () => verifyEvent(delivery.body, delivery.headers, `whsec_${Buffer.from('another secret of 24 bytes').toString('base64')}`),
        'another secret fails',
      );
      await admin.admin.webhookEndpoints.delete(endpoint.id);
    } finally {
      await new Promise((resolve) => receiver.close(resolve));
    }
  });
});
