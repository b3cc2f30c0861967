import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { Webhook } from 'standardwebhooks';
import { Ledger, type Outcome } from '../../src/ledger/ledger.js';
import { appKey, createTestApp, fundedAccount, ledgerFacts, settleEvents, TestClock, type TestApp } from '../helpers/app.js';

// Spend limits (SPEC "Events to the app, spend limits, auto top-up", invariant 15): every
// refusal (402 with window, limit and spent; nothing written; the key keeps its answer), bad
// input, unknown accounts, 50 spends racing on real parallel connections against a daily limit,
// holds counted at creation and given back when they release, windows rolling over at UTC
// midnight and at the month's start, batches answering as single spends, and the
// spend_limit.reached event, written once per window and delivered.
let test: TestApp;
before(async () => {
  // Its receiver listens on 127.0.0.1, which only TALLY_EVENTS_ALLOW_PRIVATE lets an endpoint name.
  test = await createTestApp({ poolSize: 60, eventDestinations: { allowPrivate: true } });
});
after(async () => {
  await test.close();
});

let keys = 0;
const nextKey = () => `sl-${(keys += 1)}`;
const setLimits = (account: string, body: unknown) => test.call('PUT', `/v1/accounts/${account}/limits`, body);
const spend = (account: string, amount: number, key = nextKey()) =>
  test.call('POST', `/v1/accounts/${account}/usage`, { amount, idempotency_key: key });
const hold = (account: string, amount: number, key = nextKey(), expiresInSeconds = 900) =>
  test.call('POST', `/v1/accounts/${account}/holds`, { amount, idempotency_key: key, expires_in_seconds: expiresInSeconds });

async function limitEvents(account: string): Promise<any[]> {
  await settleEvents(test);
  const answer = await test.call('GET', `/v1/events?account_id=${account}&limit=500`);
  return answer.body.events.filter((event: { type: string }) => event.type === 'spend_limit.reached');
}

const countBy = (values: unknown[]): Record<string, number> =>
  values.reduce<Record<string, number>>((counts, value) => {
    counts[String(value)] = (counts[String(value)] ?? 0) + 1;
    return counts;
  }, {});

describe('setting limits', () => {
  it('refuses bad input with 400 naming the field, and an unknown account with 404, writing nothing', async () => {
    await fundedAccount(test, 'sl_bad', 100);
    const cases: [unknown, string][] = [
      [{ per_day: -1 }, 'per_day'],
      [{ per_day: 1.5 }, 'per_day'],
      [{ per_month: Number.MAX_SAFE_INTEGER + 1 }, 'per_month'],
      [{ per_month: 1e300 }, 'per_month'],
      [{ per_day: '10' }, 'per_day'],
      [{ per_week: 10 }, 'per_week'],
      [[10], 'body'],
    ];
    for (const [body, field] of cases) {
      const answer = await setLimits('sl_bad', body);
      assert.equal(answer.status, 400, JSON.stringify(body));
      assert.equal(answer.body.error.code, 'invalid_request');
      assert.equal(answer.body.error.field, field, JSON.stringify(body));
    }
    for (const answer of [await setLimits('sl_nobody', { per_day: 10 }), await test.call('GET', '/v1/accounts/sl_nobody/limits')]) {
      assert.equal(answer.status, 404);
      assert.equal(answer.body.error.code, 'account_not_found');
    }
    const { rows } = await test.database.db.query(
      `select (select count(*) from spend_limits)::int as limits, (select count(*) from audit_log where action = 'spend_limits.set')::int as audited`,
    );
    assert.deepEqual(rows[0], { limits: 0, audited: 0 });
    assert.equal((await test.call('GET', '/v1/accounts/sl_bad/limits')).body.per_day, null);
  });

  it('sets, keeps, changes and removes each window; answers the limits, what was spent and when each window resets', async () => {
    await fundedAccount(test, 'sl_set', 1000);
    assert.equal((await spend('sl_set', 30)).status, 200);
    const before = await test.call('GET', '/v1/accounts/sl_set/limits');
    assert.deepEqual(before.body, {
      account_id: 'sl_set',
      per_day: null,
      per_month: null,
      spent: { day: 30, month: 30 },
      resets_at: { day: '2030-01-02T00:00:00.000Z', month: '2030-02-01T00:00:00.000Z' },
    });
    const set = await setLimits('sl_set', { per_day: 100, per_month: 500 });
    assert.equal(set.status, 200);
    assert.deepEqual(
      { ...set.body, resets_at: undefined },
      { account_id: 'sl_set', per_day: 100, per_month: 500, spent: { day: 30, month: 30 }, resets_at: undefined },
      'what was spent before the limits counts',
    );
    assert.deepEqual((await setLimits('sl_set', { per_month: 400 })).body.per_day, 100, 'a window left out keeps its limit');
    assert.deepEqual(
      (await setLimits('sl_set', {})).body,
      (await test.call('GET', '/v1/accounts/sl_set/limits')).body,
      'an empty body changes nothing',
    );
    const dayOff = await setLimits('sl_set', { per_day: null });
    assert.deepEqual([dayOff.body.per_day, dayOff.body.per_month], [null, 400]);
    assert.equal((await spend('sl_set', 370)).status, 200);
    assert.equal((await spend('sl_set', 1)).status, 402, 'the month limit alone still holds');
    const off = await setLimits('sl_set', { per_month: null });
    assert.deepEqual([off.body.per_day, off.body.per_month, off.body.spent], [null, null, { day: 400, month: 400 }]);
    const { rows } = await test.database.db.query<{ spend_limited: boolean; rows: number }>(
      `select spend_limited, (select count(*) from spend_limits where account_id = 'sl_set')::int as rows from accounts where id = 'sl_set'`,
    );
    assert.deepEqual(rows[0], { spend_limited: false, rows: 0 }, 'without limits, spends read nothing more');
    assert.equal((await spend('sl_set', 1)).status, 200);
    const audited = await test.database.db.query<{ after: unknown }>(
      `select after from audit_log where account_id = 'sl_set' and action = 'spend_limits.set' order by id`,
    );
    assert.deepEqual(
      audited.rows.map((row) => row.after),
      [
        { per_day: 100, per_month: 500 },
        { per_day: 100, per_month: 400 },
        { per_day: null, per_month: 400 },
        { per_day: null, per_month: null },
      ],
    );
  });
});

describe('refusals', () => {
  it('refuses a usage that would pass the daily limit with 402 {window, limit, spent}, writing nothing; the key answers the same afterwards', async () => {
    await fundedAccount(test, 'sl_day', 1000);
    await setLimits('sl_day', { per_day: 100, per_month: 1000 });
    assert.equal((await spend('sl_day', 60)).status, 200);
    const before = await ledgerFacts(test, 'sl_day');
    const refused = await spend('sl_day', 41, 'sl_day-refused');
    assert.equal(refused.status, 402);
    assert.deepEqual(refused.body.error, {
      code: 'spend_limit_exceeded',
      message: 'this spend of 41 credits would pass the day limit of 100 credits (60 spent)',
      window: 'day',
      limit: 100,
      spent: 60,
      resets_at: '2030-01-02T00:00:00.000Z',
    });
    assert.deepEqual(await ledgerFacts(test, 'sl_day'), before, 'nothing written to the ledger');
    assert.deepEqual((await test.call('GET', '/v1/accounts/sl_day/limits')).body.spent, { day: 60, month: 60 });
    // The same key, after the limit is lifted: still the first answer, said to be a replay.
    await setLimits('sl_day', { per_day: null });
    const replayed = await test.app.inject({
      method: 'POST',
      url: '/v1/accounts/sl_day/usage',
      headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ amount: 41, idempotency_key: 'sl_day-refused' }),
    });
    assert.equal(replayed.statusCode, 402);
    assert.equal(replayed.headers['idempotent-replayed'], 'true');
    assert.deepEqual(JSON.parse(replayed.body).error, { ...refused.body.error, replayed: true });
    assert.equal((await spend('sl_day', 42, 'sl_day-refused')).status, 409, 'another amount under the key is a conflict');
    assert.deepEqual(await ledgerFacts(test, 'sl_day'), before);
    assert.equal((await spend('sl_day', 41)).status, 200, 'a new key is decided under the new limits');
  });

  it('refuses by the month limit with window "month", and by the day first when both would be passed', async () => {
    await fundedAccount(test, 'sl_month', 1000);
    await setLimits('sl_month', { per_day: 500, per_month: 80 });
    assert.equal((await spend('sl_month', 50)).status, 200);
    const refused = await spend('sl_month', 31);
    assert.equal(refused.status, 402);
    assert.deepEqual(
      [refused.body.error.window, refused.body.error.limit, refused.body.error.spent, refused.body.error.resets_at],
      ['month', 80, 50, '2030-02-01T00:00:00.000Z'],
    );
    await setLimits('sl_month', { per_day: 60 });
    assert.equal((await spend('sl_month', 31)).body.error.window, 'day');
    assert.equal((await spend('sl_month', 10)).status, 200, 'exactly up to the limit is allowed');
    assert.equal((await spend('sl_month', 1)).status, 402);
  });

  it('a limit of 0 stops every spend; insufficient credits are answered before the limit', async () => {
    await fundedAccount(test, 'sl_zero', 10);
    await setLimits('sl_zero', { per_day: 0 });
    assert.equal((await spend('sl_zero', 1)).body.error.code, 'spend_limit_exceeded');
    assert.equal((await hold('sl_zero', 1)).body.error.code, 'spend_limit_exceeded');
    assert.equal((await spend('sl_zero', 11)).body.error.code, 'insufficient_credits');
    assert.equal((await test.call('GET', '/v1/accounts/sl_zero/balance')).body.available, 10);
  });
});

describe('holds', () => {
  it('counts a hold when it is made, refuses one that would pass, and gives back what a void, a smaller capture or an expiry releases', async () => {
    await fundedAccount(test, 'sl_hold', 1000);
    await setLimits('sl_hold', { per_day: 100 });
    const first = await hold('sl_hold', 70);
    assert.equal(first.status, 201);
    const before = await ledgerFacts(test, 'sl_hold');
    const refused = await hold('sl_hold', 31, 'sl_hold-refused');
    assert.deepEqual([refused.status, refused.body.error.code, refused.body.error.spent], [402, 'spend_limit_exceeded', 70]);
    assert.deepEqual(await ledgerFacts(test, 'sl_hold'), before, 'nothing written');
    assert.equal((await hold('sl_hold', 31, 'sl_hold-refused')).body.error.replayed, true);
    assert.equal((await spend('sl_hold', 31)).status, 402, 'a usage sees the pending hold as spent');
    const spent = async () => (await test.call('GET', '/v1/accounts/sl_hold/limits')).body.spent.day;

    assert.deepEqual((await test.call('POST', `/v1/holds/${first.body.hold_id}/capture`, { amount: 40 })).body.captured, 40);
    assert.equal(await spent(), 40, 'a capture below the hold counts what it captured');
    const second = await hold('sl_hold', 60);
    assert.equal(second.status, 201);
    assert.equal((await test.call('POST', `/v1/holds/${second.body.hold_id}/void`)).status, 200);
    assert.equal(await spent(), 40, 'a void gives the hold back');
    assert.equal((await hold('sl_hold', 60, nextKey(), 60)).status, 201);
    assert.equal(await spent(), 100);
    test.clock.advanceSeconds(61);
    await test.ledger.settleDue(100);
    assert.equal(await spent(), 40, 'an expired hold is given back');
    const whole = await hold('sl_hold', 60);
    assert.equal((await test.call('POST', `/v1/holds/${whole.body.hold_id}/capture`)).body.captured, 60);
    assert.equal(await spent(), 100);
    assert.equal((await spend('sl_hold', 1)).status, 402);
  });

  it('counts holds that were pending when the first limit was set, and gives them back when they release', async () => {
    await fundedAccount(test, 'sl_pending', 1000);
    const pending = await hold('sl_pending', 50);
    assert.equal((await spend('sl_pending', 20)).status, 200);
    const set = await setLimits('sl_pending', { per_day: 100 });
    assert.deepEqual(set.body.spent, { day: 70, month: 70 });
    assert.equal((await spend('sl_pending', 31)).status, 402);
    await test.call('POST', `/v1/holds/${pending.body.hold_id}/void`);
    assert.deepEqual((await test.call('GET', '/v1/accounts/sl_pending/limits')).body.spent, { day: 20, month: 20 });
    assert.equal((await spend('sl_pending', 80)).status, 200);
  });
});

describe('concurrency', () => {
  it('50 spends racing on parallel connections against a daily limit of 250 accept exactly 250 credits', async () => {
    await fundedAccount(test, 'sl_race', 10_000);
    await setLimits('sl_race', { per_day: 250 });
    // Straight to the ledger: each spend is its own transaction on its own connection.
    const outcomes = await Promise.all(
      Array.from({ length: 50 }, (_, index) => test.ledger.usage('sl_race', { amount: 10, idempotency_key: `race-${index}` }, 'app')),
    );
    assert.deepEqual(countBy(outcomes.map((outcome) => outcome.status)), { 200: 25, 402: 25 });
    assert.ok(
      outcomes
        .filter((outcome) => outcome.status === 402)
        .every((outcome) => (outcome.body.error as { code: string }).code === 'spend_limit_exceeded'),
    );
    assert.equal((await test.call('GET', '/v1/accounts/sl_race/balance')).body.available, 10_000 - 250);
    assert.deepEqual((await test.call('GET', '/v1/accounts/sl_race/limits')).body.spent, { day: 250, month: 250 });
    const reached = await limitEvents('sl_race');
    assert.equal(reached.length, 1, 'spend_limit.reached once for the window');
    assert.deepEqual(reached[0].data, {
      window: 'day',
      limit: 250,
      spent: 250,
      amount: 10,
      refused: false,
      resets_at: '2030-01-02T00:00:00.000Z',
    });
  });

  it('50 HTTP spends and holds racing (the server batches the spends) accept exactly up to the limit', async () => {
    await fundedAccount(test, 'sl_race_http', 10_000);
    await setLimits('sl_race_http', { per_day: 300 });
    const answers = await Promise.all(
      Array.from({ length: 50 }, (_, index) => (index % 2 === 0 ? spend('sl_race_http', 12) : hold('sl_race_http', 12))),
    );
    const accepted = answers.filter((answer) => answer.status < 300);
    assert.equal(accepted.length, 25, 'exactly 300 / 12 = 25 accepted');
    assert.ok(answers.filter((answer) => answer.status === 402).every((answer) => answer.body.error.code === 'spend_limit_exceeded'));
    const balance = (await test.call('GET', '/v1/accounts/sl_race_http/balance')).body;
    assert.equal(balance.available, 10_000 - 300);
    assert.equal(balance.held, 12 * accepted.filter((answer) => answer.status === 201).length);
    assert.deepEqual((await test.call('GET', '/v1/accounts/sl_race_http/limits')).body.spent, { day: 300, month: 300 });
  });
});

describe('windows', () => {
  it('roll over at UTC midnight and at the start of the month; a hold made before midnight gives nothing back to the new day', async () => {
    const clock = new TestClock(Date.parse('2030-01-31T23:58:00.000Z'));
    const ledger = new Ledger(test.database.db, { clock: clock.now, adjustmentCreditsMax: 100_000 });
    await fundedAccount(test, 'sl_roll', 10_000);
    const usage = (amount: number) => ledger.usage('sl_roll', { amount, idempotency_key: nextKey() }, 'app');
    await ledger.setSpendLimits('sl_roll', { per_day: 100, per_month: 250 }, 'app');
    assert.equal((await usage(60)).status, 200);
    const late = await ledger.hold('sl_roll', { amount: 40, idempotency_key: nextKey(), expires_in_seconds: 3600 }, 'app');
    assert.equal(late.status, 201);
    assert.equal(((await usage(1)).body.error as { window: string }).window, 'day');
    clock.advanceSeconds(119); // 23:59:59.000
    assert.equal((await usage(1)).status, 402, 'still January 31');
    clock.advanceSeconds(1); // 2030-02-01T00:00:00Z: a new day and a new month
    assert.deepEqual((await ledger.spendLimits('sl_roll')).spent, { day: 0, month: 0 });
    assert.equal((await usage(100)).status, 200);
    assert.equal(((await usage(1)).body.error as { spent: number }).spent, 100);
    await ledger.void(String(late.body.hold_id), 'app');
    assert.deepEqual((await ledger.spendLimits('sl_roll')).spent, { day: 100, month: 100 }, 'the January hold gives nothing to February');
    clock.advanceSeconds(24 * 3600);
    assert.equal((await usage(100)).status, 200);
    clock.advanceSeconds(24 * 3600);
    const monthRefusal = await usage(51);
    assert.deepEqual(
      [(monthRefusal.body.error as { window: string }).window, (monthRefusal.body.error as { spent: number }).spent],
      ['month', 200],
    );
    assert.equal((await usage(50)).status, 200);
    clock.advanceSeconds(26 * 24 * 3600); // 2030-03-01
    assert.deepEqual((await ledger.spendLimits('sl_roll')).resets_at, {
      day: '2030-03-02T00:00:00.000Z',
      month: '2030-04-01T00:00:00.000Z',
    });
    assert.equal((await usage(100)).status, 200);
  });
});

describe('batches', () => {
  it('a batch mixing accounts with and without limits answers as single spends, limited ones on the per-event path', async () => {
    const copies = ['sl_b_', 'sl_s_'];
    for (const prefix of copies) {
      await fundedAccount(test, `${prefix}free`, 500);
      await fundedAccount(test, `${prefix}capped`, 500);
      await setLimits(`${prefix}capped`, { per_day: 50 });
    }
    const events = [
      ['capped', 20, 'a'],
      ['free', 100, 'b'],
      ['capped', 40, 'c'],
      ['capped', 30, 'd'],
      ['free', 200, 'e'],
      ['capped', 20, 'a'],
      ['free', 100, 'f'],
    ] as const;
    const batched = await test.ledger.usageBatch(
      events.map(([account, amount, key]) => ({ account_id: `sl_b_${account}`, amount, idempotency_key: key })),
      'app',
    );
    const single: Outcome[] = new Array(events.length);
    // A batch takes its events account by account, in id order ("capped" before "free").
    const order = events
      .map((event, index) => ({ event, index }))
      .sort((x, y) => x.event[0].localeCompare(y.event[0]) || x.index - y.index);
    for (const { event, index } of order)
      single[index] = await test.ledger.usage(`sl_s_${event[0]}`, { amount: event[1], idempotency_key: event[2] }, 'app');
    const blank = (outcomes: Outcome[], prefix: string) =>
      JSON.parse(
        JSON.stringify(outcomes)
          .split(prefix)
          .join('')
          .replace(/"entry_\d+"/g, '"entry"'),
      );
    assert.deepEqual(blank(batched, 'sl_b_'), blank(single, 'sl_s_'));
    assert.deepEqual(
      batched.map((outcome) => outcome.status),
      [200, 200, 402, 200, 200, 200, 200],
    );
    assert.equal((batched[2]?.body.error as { code: string } | undefined)?.code, 'spend_limit_exceeded');
    assert.equal(batched[5]?.body.replayed, true);
    for (const prefix of copies)
      assert.deepEqual((await test.call('GET', `/v1/accounts/${prefix}capped/limits`)).body.spent, { day: 50, month: 50 });
    // New keys, a total within available: what the set-based path would take at once, but the limit is reached.
    await test.call('PUT', '/v1/accounts/sl_b_capped/limits', { per_day: 60 });
    const fresh = await test.ledger.usageBatch(
      [
        { account_id: 'sl_b_capped', amount: 5, idempotency_key: 'x' },
        { account_id: 'sl_b_free', amount: 5, idempotency_key: 'x' },
        { account_id: 'sl_b_capped', amount: 6, idempotency_key: 'y' },
      ],
      'app',
    );
    assert.deepEqual(
      fresh.map((outcome) => outcome.status),
      [200, 200, 402],
    );
    assert.deepEqual((await test.call('GET', '/v1/accounts/sl_b_capped/limits')).body.spent, { day: 55, month: 55 });
  });
});

describe('the spend_limit.reached event', () => {
  let receiver: Server;
  let base = '';
  const received: { id: string; body: any; valid: boolean }[] = [];
  let secret = '';
  before(async () => {
    receiver = createServer((request, response) => {
      let body = '';
      request.on('data', (chunk) => (body += chunk));
      request.on('end', () => {
        let valid = true;
        try {
          new Webhook(secret).verify(body, request.headers as Record<string, string>);
        } catch {
          valid = false;
        }
        received.push({ id: String(request.headers['webhook-id']), body: JSON.parse(body), valid });
        response.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    const address = receiver.address();
    base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  });
  after(async () => {
    receiver.closeAllConnections();
    await new Promise((resolve) => receiver.close(resolve));
  });

  it('is written once per window when first refused, again when the limit changes, and delivered signed to the endpoint', async () => {
    const created = await test.admin('POST', '/v1/admin/webhook-endpoints', {
      url: `${base}/limits`,
      event_types: ['spend_limit.reached'],
    });
    assert.equal(created.status, 201);
    secret = created.body.secret;
    await fundedAccount(test, 'sl_event', 1000);
    await setLimits('sl_event', { per_day: 100 });
    assert.equal((await spend('sl_event', 90)).status, 200);
    assert.equal((await spend('sl_event', 20)).status, 402);
    assert.equal((await spend('sl_event', 30)).status, 402);
    assert.equal((await spend('sl_event', 10)).status, 200, 'reaching the limit after a refusal writes no second event');
    await setLimits('sl_event', { per_day: 120 });
    assert.equal((await spend('sl_event', 20)).status, 200);
    const events = await limitEvents('sl_event');
    assert.deepEqual(
      events.map((event) => event.data),
      [
        { window: 'day', limit: 100, spent: 90, amount: 20, refused: true, resets_at: '2030-01-02T00:00:00.000Z' },
        { window: 'day', limit: 120, spent: 120, amount: 20, refused: false, resets_at: '2030-01-02T00:00:00.000Z' },
      ],
    );
    for (let round = 0; round < 50 && received.filter((item) => item.body.account_id === 'sl_event').length < 2; round += 1) {
      await settleEvents(test);
      await test.parts.eventDelivery.deliverOnce();
    }
    const delivered = received.filter((item) => item.body.account_id === 'sl_event');
    assert.deepEqual(
      delivered.map((item) => [item.body.type, item.body.data.limit, item.valid]),
      [
        ['spend_limit.reached', 100, true],
        ['spend_limit.reached', 120, true],
      ],
    );
    assert.deepEqual(
      delivered.map((item) => item.id),
      events.map((event) => event.id),
    );
  });
});
