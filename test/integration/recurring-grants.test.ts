import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { entitlementsCatalog } from '../helpers/entitlements-catalog.js';

// Recurring grants on the test clock: the free plan's 50 credits a day are given by the account's
// first spend, hold or balance read of the UTC day, inside that call's transaction, once; they
// expire at the day's end and never roll over; a quote counts them without writing them; an
// account that never calls gets nothing written; a batch gives them before it decides.

let test: TestApp;
before(async () => {
  test = await createTestApp({ catalog: entitlementsCatalog() });
});
after(async () => {
  await test.close();
});

let keyCount = 0;
const key = (): string => `r${(keyCount += 1)}`;
const day = 86_400;

async function grantsOf(accountId: string) {
  const { rows } = await test.database.db.query<{ source: string; amount: number; remaining: number; grant_key: string; expires_at: Date }>(
    'select source, amount, remaining, grant_key, expires_at from grants where account_id = $1 order by id',
    [accountId],
  );
  return rows;
}
async function writtenFor(accountId: string): Promise<number> {
  const { rows } = await test.database.db.query<{ count: number }>(
    `select (select count(*) from grants where account_id = $1) + (select count(*) from entries where account_id = $1)
       + (select count(*) from events where account_id = $1) + (select count(*) from request_keys where account_id = $1) as count`,
    [accountId],
  );
  return Number(rows[0]?.count);
}
const balanceOf = async (accountId: string) => (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;

describe('recurring grants', () => {
  it('are given by the first balance read of the day, once, keyed and expiring at the day end', async () => {
    await fundedAccount(test, 'r-read', 0);
    assert.equal((await balanceOf('r-read')).available, 50);
    assert.equal((await balanceOf('r-read')).available, 50);
    const today = test.clock.now().toISOString().slice(0, 10);
    assert.deepEqual(await grantsOf('r-read'), [
      {
        source: 'recurring',
        amount: 50,
        remaining: 50,
        grant_key: `recurring:r-read:free:day:${today}`,
        expires_at: new Date(Date.parse(`${today}T00:00:00.000Z`) + day * 1000),
      },
    ]);
  });

  it('are given by the first spend of the day at a zero balance, which then spends from them', async () => {
    await fundedAccount(test, 'r-spend', 0);
    const spent = await test.call('POST', '/v1/accounts/r-spend/usage', { amount: 10, idempotency_key: key() });
    assert.deepEqual([spent.status, spent.body.available], [200, 40], JSON.stringify(spent.body));
    const held = await test.call('POST', '/v1/accounts/r-spend/holds', { amount: 40, idempotency_key: key() });
    assert.deepEqual([held.status, held.body.available], [201, 0]);
    const refused = await test.call('POST', '/v1/accounts/r-spend/usage', { amount: 1, idempotency_key: key() });
    assert.deepEqual([refused.status, refused.body.error.code], [402, 'insufficient_credits'], 'one grant a day, not one a call');
    assert.equal((await grantsOf('r-spend')).length, 1);
  });

  it('are given by the first hold of the day', async () => {
    await fundedAccount(test, 'r-hold', 0);
    const held = await test.call('POST', '/v1/accounts/r-hold/holds', { amount: 30, idempotency_key: key() });
    assert.deepEqual([held.status, held.body.available], [201, 20], JSON.stringify(held.body));
  });

  it('are counted by a quote as if given, without writing anything', async () => {
    await fundedAccount(test, 'r-quote', 0);
    const before = await writtenFor('r-quote');
    const quote = await test.call('POST', '/v1/accounts/r-quote/quote', { amount: 50 });
    assert.deepEqual([quote.body.available, quote.body.allowed], [50, true], JSON.stringify(quote.body));
    const tooMuch = await test.call('POST', '/v1/accounts/r-quote/quote', { amount: 51 });
    assert.deepEqual([tooMuch.body.allowed, tooMuch.body.reason], [false, 'insufficient_credits']);
    assert.equal(await writtenFor('r-quote'), before);
  });

  it('are given to the accounts of a usage batch before it decides', async () => {
    await fundedAccount(test, 'r-batch-1', 0);
    await fundedAccount(test, 'r-batch-2', 0);
    const batch = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'r-batch-1', amount: 20, idempotency_key: key() },
        { account_id: 'r-batch-2', amount: 50, idempotency_key: key() },
        { account_id: 'r-batch-1', amount: 30, idempotency_key: key() },
      ],
    });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    assert.deepEqual(
      batch.body.results.map((result: { status: number; available: number }) => [result.status, result.available]),
      [
        [200, 30],
        [200, 0],
        [200, 0],
      ],
    );
  });

  it('in a batch, refuse a priced event on a meter outside the plan with 403 and decide the others', async () => {
    await fundedAccount(test, 'r-batch-3', 0);
    const batch = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'r-batch-3', meter: 'openai/gpt-5-mini', quantities: { output_tokens: 10_000 }, idempotency_key: key() },
        { account_id: 'r-batch-3', meter: 'openai/gpt-5', quantities: { output_tokens: 1000 }, idempotency_key: key() },
        { account_id: 'r-batch-3', amount: 3, idempotency_key: key() },
      ],
    });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    const [mini, gpt5, plain] = batch.body.results;
    assert.deepEqual([mini.status, mini.amount, mini.available], [200, 2, 48]);
    assert.deepEqual(
      [gpt5.status, gpt5.error.code, gpt5.error.meter, gpt5.error.plan_id],
      [403, 'meter_not_entitled', 'openai/gpt-5', 'free'],
    );
    assert.deepEqual([plain.status, plain.available], [200, 45]);
  });

  it('are not given by a batch whose only events of an account are refused as not entitled (simulator seed 1000)', async () => {
    // The batch decides another account at once; r-batch-4's one event names a meter its free plan
    // lacks: a refusal that writes nothing, as a single spend's does.
    await fundedAccount(test, 'r-batch-4', 0);
    await fundedAccount(test, 'r-batch-5', 0);
    const before = await writtenFor('r-batch-4');
    const batch = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'r-batch-5', amount: 5, idempotency_key: key() },
        { account_id: 'r-batch-4', meter: 'openai/gpt-5', quantities: { output_tokens: 1000 }, idempotency_key: 'r-batch-4-refused' },
      ],
    });
    assert.equal(batch.status, 200, JSON.stringify(batch.body));
    assert.deepEqual(
      batch.body.results.map((result: { status: number }) => result.status),
      [200, 403],
    );
    // Only the refusal's key, as the key's first outcome; no grant, entry or event.
    assert.equal(await writtenFor('r-batch-4'), before + 1);
    assert.deepEqual(await grantsOf('r-batch-4'), []);
    assert.equal((await grantsOf('r-batch-5')).length, 1);
  });

  it('write nothing for a free account that never calls, however many days pass, nor for reads that are not balances', async () => {
    await fundedAccount(test, 'r-idle', 0);
    const before = await writtenFor('r-idle');
    test.clock.advanceSeconds(3 * day);
    await test.call('GET', '/v1/accounts/r-idle/entitlements');
    await test.call('GET', '/v1/accounts/r-idle/ledger');
    await test.parts.ledger.settleDue(100);
    assert.equal(await writtenFor('r-idle'), before);
    assert.deepEqual(await grantsOf('r-idle'), []);
  });

  it("at a day boundary: the old day's grant expires, the new day's is given once, nothing rolls over", async () => {
    await fundedAccount(test, 'r-days', 0);
    const spent = await test.call('POST', '/v1/accounts/r-days/usage', { amount: 10, idempotency_key: key() });
    assert.equal(spent.body.available, 40);
    // To the last millisecond of the day: still the same grant.
    const now = test.clock.now();
    const nextDay = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate() + 1);
    test.clock.advanceSeconds((nextDay - now.getTime() - 1) / 1000);
    assert.equal((await balanceOf('r-days')).available, 40);
    test.clock.advanceSeconds(0.001);
    const [first, second] = await Promise.all([balanceOf('r-days'), balanceOf('r-days')]);
    assert.deepEqual([first.available, second.available], [50, 50]);
    const grants = await grantsOf('r-days');
    assert.deepEqual(
      grants.map((grant) => [grant.remaining, grant.expires_at.getTime()]),
      [
        [0, nextDay],
        [50, nextDay + day * 1000],
      ],
    );
    const { rows } = await test.database.db.query<{ amount: number }>(
      "select amount from entries where account_id = 'r-days' and kind = 'expire'",
    );
    assert.deepEqual(rows, [{ amount: -40 }], "the old day's 40 credits expired");
  });

  it('fall on UTC days, ISO weeks (from Monday) and calendar months', async () => {
    const { rows } = await test.database.db.query<{ every: string; start: string; end: string }>(
      `select e.every, to_char(p.period_start, 'YYYY-MM-DD') as start, tally_iso(p.period_end) as end
       from unnest(array['day', 'week', 'month']) as e(every)
       cross join lateral tally_recurring_period(e.every, '2030-01-31T23:59:59.999Z') p`,
    );
    assert.deepEqual(rows, [
      { every: 'day', start: '2030-01-31', end: '2030-02-01T00:00:00.000Z' },
      { every: 'week', start: '2030-01-28', end: '2030-02-04T00:00:00.000Z' },
      { every: 'month', start: '2030-01-01', end: '2030-02-01T00:00:00.000Z' },
    ]);
  });
});
