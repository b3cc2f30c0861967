import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { type TestApp, createTestApp, fundedAccount, ledgerFacts } from '../helpers/app.js';

// Priced usage over HTTP: spends, holds, captures, batches and quotes by meter and quantities,
// charged floor(cost + carry) with the carry kept per account; the answers and entries name the
// cost and the rate card version; every refusal writes nothing. Rates are the example catalog's
// (standard: gpt-5-mini input 0.000025, output 0.0002; gpt-5 output 0.001; volume for plan pro).

let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

const mini = 'openai/gpt-5-mini';
let keyCount = 0;
const key = (): string => `k${(keyCount += 1)}`;

async function carryOf(account: string): Promise<string> {
  const { rows } = await test.database.db.query<{ carry: string }>('select carry::text as carry from accounts where id = $1', [account]);
  return rows[0]?.carry ?? 'none';
}

/** Everything a refusal must leave alone. */
async function snapshot(account: string) {
  const facts = await ledgerFacts(test, account);
  const keys = await test.database.db.query<{ count: number }>('select count(*)::int as count from request_keys where account_id = $1', [
    account,
  ]);
  const holds = await test.database.db.query<{ count: number }>('select count(*)::int as count from holds where account_id = $1', [
    account,
  ]);
  return { ...facts, carry: await carryOf(account), keys: keys.rows[0]?.count, holds: holds.rows[0]?.count };
}

describe('a priced usage', () => {
  it('charges floor(cost + carry), answers cost and rate card, and keeps the rest as the carry', async () => {
    await fundedAccount(test, 'p-1', 100);
    // 1000 output tokens at 0.0002 and 5000 input tokens at 0.000025: 0.2 + 0.125 = 0.325.
    const first = await test.call('POST', '/v1/accounts/p-1/usage', {
      meter: mini,
      quantities: { input_tokens: 5000, output_tokens: 1000 },
      idempotency_key: key(),
    });
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.deepEqual(
      { amount: first.body.amount, available: first.body.available, cost: first.body.cost, rate_card: first.body.rate_card },
      { amount: 0, available: 100, cost: '0.325', rate_card: { id: 'standard', version: 1 } },
    );
    assert.equal(await carryOf('p-1'), '0.325');
    // 4 × 0.325 = 1.3 in all: the fourth spend crosses a credit.
    const amounts: number[] = [first.body.amount];
    for (let index = 0; index < 3; index += 1) {
      const next = await test.call('POST', '/v1/accounts/p-1/usage', {
        meter: mini,
        quantities: { input_tokens: 5000, output_tokens: 1000 },
        idempotency_key: key(),
      });
      amounts.push(next.body.amount);
    }
    assert.deepEqual(amounts, [0, 0, 0, 1]);
    assert.equal(await carryOf('p-1'), '0.3');
    const facts = await ledgerFacts(test, 'p-1');
    assert.deepEqual([facts.available, facts.entry_sum], [99, 99]);
  });

  it('writes its entry with meter, quantities, card, version, cost and the carry after, zero-credit ones too', async () => {
    const { body } = await test.call('GET', '/v1/accounts/p-1/ledger?limit=2');
    const [last, before] = body.entries;
    assert.deepEqual(
      {
        kind: last.kind,
        amount: last.amount,
        meter: last.meter,
        quantities: last.quantities,
        rate_card: last.rate_card,
        cost: last.cost,
        carry_after: last.carry_after,
      },
      {
        kind: 'usage',
        amount: -1,
        meter: mini,
        quantities: { input_tokens: 5000, output_tokens: 1000 },
        rate_card: { id: 'standard', version: 1 },
        cost: '0.325',
        carry_after: '0.3',
      },
    );
    assert.deepEqual([before.amount, before.cost, before.carry_after], [0, '0.325', '0.975']);
  });

  it('is accepted at a zero balance while it charges 0, and refused 402 once it would charge a credit', async () => {
    await fundedAccount(test, 'p-zero', 0);
    const zero = await test.call('POST', '/v1/accounts/p-zero/usage', {
      meter: mini,
      quantities: { output_tokens: 4999 },
      idempotency_key: 'zero-1',
    });
    assert.deepEqual([zero.status, zero.body.amount, zero.body.cost], [200, 0, '0.9998']);
    const before = await snapshot('p-zero');
    const refused = await test.call('POST', '/v1/accounts/p-zero/usage', {
      meter: mini,
      quantities: { output_tokens: 1 },
      idempotency_key: 'zero-2',
    });
    assert.deepEqual([refused.status, refused.body.error.code, refused.body.error.available], [402, 'insufficient_credits', 0]);
    const after = await snapshot('p-zero');
    assert.deepEqual({ ...after, keys: before.keys }, before, 'neither balance nor carry moved');
    assert.equal(after.keys, (before.keys ?? 0) + 1, 'the refusal is the key’s first outcome');
    await test.admin('POST', '/v1/accounts/p-zero/grants', { amount: 5, source: 'promo', reason: 'top', idempotency_key: 'zero-top' });
    const replay = await test.call('POST', '/v1/accounts/p-zero/usage', {
      meter: mini,
      quantities: { output_tokens: 1 },
      idempotency_key: 'zero-2',
    });
    assert.deepEqual([replay.status, replay.body.error.replayed], [402, true], 'a 402 stays the first outcome after a top-up');
  });

  it('answers a replay exactly as the first time after a price change, and 409 for other quantities under its key', async () => {
    await fundedAccount(test, 'p-replay', 100);
    const body = { meter: 'openai/gpt-5', quantities: { output_tokens: 2500 }, idempotency_key: 'replay-1' };
    const first = await test.call('POST', '/v1/accounts/p-replay/usage', body);
    assert.deepEqual([first.body.amount, first.body.cost], [2, '2.5']);
    const current = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[0];
    const rates = { ...current.rates, 'openai/gpt-5': { ...current.rates['openai/gpt-5'], output_tokens: '0.01' } };
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/standard', { rates })).status, 200);
    const replay = await test.call('POST', '/v1/accounts/p-replay/usage', body);
    assert.deepEqual(replay.body, { ...first.body, replayed: true });
    const conflict = await test.call('POST', '/v1/accounts/p-replay/usage', { ...body, quantities: { output_tokens: 2501 } });
    assert.deepEqual([conflict.status, conflict.body.error.code], [409, 'idempotency_conflict']);
    const plain = await test.call('POST', '/v1/accounts/p-replay/usage', { amount: 2, idempotency_key: 'replay-1' });
    assert.equal(plain.status, 409, 'the same key for credits is another payload');
    const repriced = await test.call('POST', '/v1/accounts/p-replay/usage', { ...body, idempotency_key: 'replay-2' });
    assert.deepEqual([repriced.body.amount, repriced.body.cost, repriced.body.rate_card.version], [25, '25', current.version + 1]);
  });

  it("is priced by the account's plan card while its subscription is active", async () => {
    await fundedAccount(test, 'p-pro', 100);
    await test.database.db.query(
      `insert into subscriptions (id, account_id, status, plan_id, event_created, event_id) values ('sub_p_pro', 'p-pro', 'active', 'pro', now(), 'evt_p_pro')`,
    );
    const spent = await test.call('POST', '/v1/accounts/p-pro/usage', {
      meter: 'openai/gpt-5',
      quantities: { output_tokens: 2500 },
      idempotency_key: key(),
    });
    assert.deepEqual([spent.body.amount, spent.body.cost, spent.body.rate_card], [2, '2', { id: 'volume', version: 1 }]);
  });
});

describe('refusals of priced input write nothing', () => {
  const cases: [string, Record<string, unknown>, number, string, string | undefined][] = [
    ['an unknown meter', { meter: 'openai/gpt-9', quantities: { input_tokens: 1 } }, 400, 'unknown_meter', undefined],
    ['an unknown dimension', { meter: mini, quantities: { pixels: 1 } }, 400, 'invalid_request', 'quantities.pixels'],
    ['a negative quantity', { meter: mini, quantities: { input_tokens: -1 } }, 400, 'invalid_request', 'quantities.input_tokens'],
    ['a fractional quantity', { meter: mini, quantities: { input_tokens: 1.5 } }, 400, 'invalid_request', 'quantities.input_tokens'],
    ['a quantity past 2^53', { meter: mini, quantities: { input_tokens: 2 ** 53 } }, 400, 'invalid_request', 'quantities.input_tokens'],
    ['a quantity as text', { meter: mini, quantities: { input_tokens: '5' } }, 400, 'invalid_request', 'quantities.input_tokens'],
    ['both amount and meter', { amount: 1, meter: mini, quantities: { input_tokens: 1 } }, 400, 'invalid_request', 'meter'],
    ['neither amount nor meter', {}, 400, 'invalid_request', 'amount'],
    ['a meter without quantities', { meter: mini }, 400, 'invalid_request', 'quantities'],
    ['quantities without a meter', { quantities: { input_tokens: 1 } }, 400, 'invalid_request', 'meter'],
    ['empty quantities', { meter: mini, quantities: {} }, 400, 'invalid_request', 'quantities'],
  ];
  for (const [name, body, status, code, field] of cases) {
    for (const call of ['usage', 'holds', 'quote'] as const) {
      it(`refuses ${name} on ${call} with ${status} ${code}`, async () => {
        await fundedAccount(test, 'p-bad', 0);
        const before = await snapshot('p-bad');
        const answer = await test.call('POST', `/v1/accounts/p-bad/${call}`, {
          ...body,
          ...(call === 'quote' ? {} : { idempotency_key: key() }),
        });
        assert.equal(answer.status, status, JSON.stringify(answer.body));
        assert.equal(answer.body.error.code, code);
        if (field !== undefined) assert.equal(answer.body.error.field, field);
        if (code === 'unknown_meter') assert.equal(answer.body.error.meter, 'openai/gpt-9');
        assert.deepEqual(await snapshot('p-bad'), before);
      });
    }
  }

  it('refuses a cost beyond what a balance can hold, naming the quantities', async () => {
    await fundedAccount(test, 'p-huge', 10);
    const before = await snapshot('p-huge');
    const answer = await test.call('POST', '/v1/accounts/p-huge/usage', {
      meter: 'images/generate',
      quantities: { images: Number.MAX_SAFE_INTEGER },
      idempotency_key: key(),
    });
    assert.deepEqual([answer.status, answer.body.error.code, answer.body.error.field], [400, 'invalid_request', 'quantities']);
    assert.deepEqual(await snapshot('p-huge'), before);
  });

  it('refuses a batch with one bad priced event as a whole, naming it', async () => {
    await fundedAccount(test, 'p-batch-bad', 10);
    const before = await snapshot('p-batch-bad');
    const answer = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'p-batch-bad', amount: 1, idempotency_key: key() },
        { account_id: 'p-batch-bad', meter: mini, quantities: { pixels: 3 }, idempotency_key: key() },
      ],
    });
    assert.deepEqual([answer.status, answer.body.error.field], [400, 'events.1.quantities.pixels']);
    assert.deepEqual(await snapshot('p-batch-bad'), before);
  });
});

describe('a priced hold', () => {
  it('reserves ceil(cost) at the version in effect, and its capture charges what was used at that version with the carry', async () => {
    await fundedAccount(test, 'h-1', 20);
    // At most 3000 output tokens at 0.0002: 0.6, so 1 credit is held.
    const held = await test.call('POST', '/v1/accounts/h-1/holds', {
      meter: mini,
      quantities: { input_tokens: 1000, output_tokens: 3000 },
      idempotency_key: 'h-1',
    });
    assert.equal(held.status, 201, JSON.stringify(held.body));
    assert.deepEqual([held.body.amount, held.body.cost, held.body.available], [1, '0.625', 19]);
    const version = held.body.rate_card.version;
    // A price change before the capture does not reach the hold.
    const current = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[0];
    const rates = { ...current.rates, [mini]: { input_tokens: '1', output_tokens: '1' } };
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/standard', { rates })).status, 200);
    const captured = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, {
      quantities: { input_tokens: 1000, output_tokens: 2000 },
    });
    assert.equal(captured.status, 200, JSON.stringify(captured.body));
    assert.deepEqual(captured.body, { captured: 0, released: 1, available: 20, cost: '0.425', rate_card: { id: 'standard', version } });
    assert.equal(await carryOf('h-1'), '0.425');
    const entries = (await test.call('GET', '/v1/accounts/h-1/ledger?limit=3')).body.entries;
    assert.deepEqual(
      entries.map((entry: { kind: string; amount: number; cost?: string }) => [entry.kind, entry.amount, entry.cost]),
      [
        ['release', 1, undefined],
        ['capture', 0, '0.425'],
        ['hold', -1, '0.625'],
      ],
    );
    // Put the rates back for the tests that follow.
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/standard', { rates: current.rates })).status, 200);
  });

  it('refuses a capture that would charge more than the hold with 400 capture_exceeds_hold, changing nothing', async () => {
    await fundedAccount(test, 'h-2', 20);
    const held = await test.call('POST', '/v1/accounts/h-2/holds', {
      meter: mini,
      quantities: { output_tokens: 5000 },
      idempotency_key: 'h-2',
    });
    assert.equal(held.body.amount, 1);
    const before = await snapshot('h-2');
    // 10000 output tokens cost 2 credits, more than the 1 held.
    const over = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { quantities: { output_tokens: 10000 } });
    assert.deepEqual([over.status, over.body.error.code, over.body.error.held], [400, 'capture_exceeds_hold', 1]);
    assert.deepEqual(await snapshot('h-2'), before);
    const withAmount = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { amount: 1 });
    assert.deepEqual([withAmount.status, withAmount.body.error.field], [400, 'amount']);
    const badDimension = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { quantities: { pixels: 1 } });
    assert.deepEqual([badDimension.status, badDimension.body.error.field], [400, 'quantities.pixels']);
    assert.deepEqual(await snapshot('h-2'), before);
    const bare = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`);
    assert.deepEqual([bare.status, bare.body.captured, bare.body.cost], [200, 1, '1'], 'a bare capture takes the held quantities');
  });

  it('refuses quantities for a hold of credits', async () => {
    await fundedAccount(test, 'h-3', 20);
    const held = await test.call('POST', '/v1/accounts/h-3/holds', { amount: 5, idempotency_key: 'h-3' });
    const answer = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { quantities: { output_tokens: 1 } });
    assert.deepEqual([answer.status, answer.body.error.code, answer.body.error.field], [400, 'invalid_request', 'quantities']);
  });

  it('of zero cost reserves nothing, and is captured as an entry of 0 that keeps the carry', async () => {
    await fundedAccount(test, 'h-4', 0);
    const held = await test.call('POST', '/v1/accounts/h-4/holds', {
      meter: mini,
      quantities: { output_tokens: 0 },
      idempotency_key: 'h-4',
    });
    assert.deepEqual([held.status, held.body.amount, held.body.cost], [201, 0, '0']);
    const captured = await test.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { quantities: { output_tokens: 0 } });
    assert.deepEqual([captured.status, captured.body.captured, captured.body.released], [200, 0, 0]);
  });
});

describe('a quote', () => {
  it('prices a spend with the carry and writes nothing', async () => {
    await fundedAccount(test, 'q-1', 3);
    await test.call('POST', '/v1/accounts/q-1/usage', { meter: mini, quantities: { output_tokens: 4000 }, idempotency_key: 'q-1' });
    const before = await snapshot('q-1');
    const quote = await test.call('POST', '/v1/accounts/q-1/quote', { meter: mini, quantities: { output_tokens: 1000 } });
    assert.deepEqual(quote.body, {
      amount: 1,
      cost: '0.2',
      rate_card: { id: 'standard', version: quote.body.rate_card.version },
      available: 3,
      allowed: true,
    });
    assert.deepEqual(await snapshot('q-1'), before);
  });

  it('says insufficient_credits or spend_limit_exceeded as the spend would get it, and answers plain amounts too', async () => {
    const tooMuch = await test.call('POST', '/v1/accounts/q-1/quote', { amount: 4 });
    assert.deepEqual(tooMuch.body, { amount: 4, cost: '4', rate_card: null, available: 3, allowed: false, reason: 'insufficient_credits' });
    assert.equal((await test.call('PUT', '/v1/accounts/q-1/limits', { per_day: 1 })).status, 200);
    const limited = await test.call('POST', '/v1/accounts/q-1/quote', { amount: 2 });
    assert.deepEqual([limited.body.allowed, limited.body.reason], [false, 'spend_limit_exceeded']);
    const spent = await test.call('POST', '/v1/accounts/q-1/usage', { amount: 2, idempotency_key: 'q-limit' });
    assert.equal(spent.body.error.code, 'spend_limit_exceeded', 'the spend gets what the quote said');
    const zero = await test.call('POST', '/v1/accounts/q-1/quote', { meter: mini, quantities: { output_tokens: 1 } });
    assert.deepEqual([zero.body.amount, zero.body.allowed], [0, true], 'a spend of 0 credits passes any limit');
  });

  it('answers 404 for an unknown account', async () => {
    const answer = await test.call('POST', '/v1/accounts/q-nobody/quote', { amount: 1 });
    assert.deepEqual([answer.status, answer.body.error.code], [404, 'account_not_found']);
  });
});

describe('a batch with priced events', () => {
  it('answers each event as the single call would, beside plain events of other accounts', async () => {
    await fundedAccount(test, 'b-plain', 50);
    await fundedAccount(test, 'b-priced', 50);
    const events = [
      { account_id: 'b-plain', amount: 3, idempotency_key: 'b1' },
      { account_id: 'b-priced', meter: mini, quantities: { output_tokens: 3000 }, idempotency_key: 'b2' },
      { account_id: 'b-priced', amount: 2, idempotency_key: 'b3' },
      { account_id: 'b-priced', meter: mini, quantities: { output_tokens: 3000 }, idempotency_key: 'b4' },
      { account_id: 'b-plain', amount: 4, idempotency_key: 'b5' },
      { account_id: 'b-nobody', meter: mini, quantities: { output_tokens: 1 }, idempotency_key: 'b6' },
    ];
    const answer = await test.call('POST', '/v1/usage/batch', { events });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    const results = answer.body.results;
    assert.deepEqual(
      results.map((result: { status: number; amount?: number; available?: number; cost?: string }) => [
        result.status,
        result.amount,
        result.available,
        result.cost,
      ]),
      [
        [200, 3, 47, undefined],
        [200, 0, 50, '0.6'],
        [200, 2, 48, undefined],
        [200, 1, 47, '0.6'],
        [200, 4, 43, undefined],
        [404, undefined, undefined, undefined],
      ],
    );
    assert.equal(await carryOf('b-priced'), '0.2');
    const replay = await test.call('POST', '/v1/usage/batch', { events });
    assert.deepEqual(
      replay.body.results.slice(0, 5),
      results.slice(0, 5).map((result: object) => ({ ...result, replayed: true })),
    );
  });

  it("reads each account's carry once to price a batch, however many priced events the account has", async () => {
    // 30 priced events of 3 accounts: a read per event would scan accounts 30 times, a read per
    // account at most 3. Scans are counted in the transaction's own statistics, on a connection
    // of its own that plans with index scans only (a sequential scan run again counts once).
    const accounts = ['carry-one', 'carry-two', 'carry-three'];
    for (const account of accounts) await fundedAccount(test, account, 10);
    const ids = Array.from({ length: 30 }, (_, index) => accounts[index % accounts.length]);
    const client = new pg.Client({ connectionString: test.database.url });
    await client.connect();
    try {
      await client.query('set enable_seqscan = off');
      await client.query('begin');
      const scans = async () =>
        Number(
          (
            await client.query<{ scans: string }>(
              `select seq_scan + idx_scan as scans from pg_stat_xact_user_tables where relname = 'accounts'`,
            )
          ).rows[0]?.scans,
        );
      const before = await scans();
      const { rows } = await client.query<{ carries: string[] }>(
        'select carries::text[] as carries from tally_price_events($1, $2, $3, $4)',
        [ids, ids.map(() => mini), ids.map(() => JSON.stringify({ output_tokens: 1000 })), test.clock.now()],
      );
      const read = (await scans()) - before;
      await client.query('rollback');
      assert.deepEqual(
        rows[0]?.carries,
        ids.map(() => '0'),
        "every event priced with its account's carry",
      );
      assert.ok(
        read >= 1 && read <= accounts.length,
        `accounts scanned ${read} times for ${ids.length} events of ${accounts.length} accounts`,
      );
    } finally {
      await client.end();
    }
  });
});
