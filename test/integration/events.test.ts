import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { adminKey, createTestApp, fundedAccount, settleEvents, viewerKey, type TestApp } from '../helpers/app.js';

// The event log: written by triggers in the change's transaction, read in sequence order with
// `after`, never skipping an event whose transaction commits after a later one was read.
let test: TestApp;

before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

async function events(query = '', key?: string): Promise<any[]> {
  await settleEvents(test);
  const answer = await test.call('GET', `/v1/events${query}`, undefined, key);
  assert.equal(answer.status, 200, JSON.stringify(answer.body));
  return answer.body.events;
}

async function eventsOf(accountId: string): Promise<any[]> {
  return events(`?account_id=${accountId}&limit=500`);
}

const typesOf = (list: any[]) => list.map((event) => event.type);
let keyCount = 0;
const spend = (accountId: string, amount: number) =>
  test.call('POST', `/v1/accounts/${accountId}/usage`, { amount, idempotency_key: `spend-${(keyCount += 1)}` });

describe('writing events', () => {
  it('writes grant.created in the grant transaction, with the event shape of SPEC', async () => {
    await fundedAccount(test, 'ev_grant', 300);
    const [event] = await eventsOf('ev_grant');
    assert.equal(event.type, 'grant.created');
    assert.deepEqual(Object.keys(event).sort(), ['account_id', 'created_at', 'data', 'id', 'sequence', 'type']);
    assert.match(event.id, /^event_\d+$/);
    assert.equal(event.data.amount, 300);
    assert.equal(event.data.source, 'promo');
  });

  it('writes no event for a change that is rolled back', async () => {
    await fundedAccount(test, 'ev_rollback', 0);
    await assert.rejects(
      test.database.db.withTransaction(async (client) => {
        await client.query(
          `select tally_add_grant('ev_rollback', 'promo', 50, 0, null, 'rolled-back', 'grant', '{}', 'admin', 'test', now())`,
        );
        const inside = await client.query(`select count(*)::int as count from events where account_id = 'ev_rollback'`);
        assert.equal(inside.rows[0]?.count, 1, 'the event is written inside the transaction');
        throw new Error('roll back');
      }),
      /roll back/,
    );
    assert.deepEqual(await eventsOf('ev_rollback'), []);
    const { rows } = await test.database.db.query(`select count(*)::int as count from events where account_id = 'ev_rollback'`);
    assert.equal(rows[0]?.count, 0);
  });

  it('fires balance.low once per downward crossing, not per spend, and balance.depleted at 0; ordinary spends write nothing', async () => {
    await fundedAccount(test, 'ev_low', 300);
    const threshold = await test.call('PUT', '/v1/accounts/ev_low/low-balance-threshold', { threshold: 100 });
    assert.deepEqual(threshold.body, { account_id: 'ev_low', low_balance_threshold: 100 });
    const count = async () =>
      (await test.database.db.query(`select count(*)::int as count from events where account_id = 'ev_low'`)).rows[0]?.count;
    const before = await count();
    assert.equal((await spend('ev_low', 150)).status, 200);
    assert.equal(await count(), before, 'a spend that crosses nothing writes no event');
    await spend('ev_low', 60); // 150 → 90: crosses 100
    await spend('ev_low', 10); // 90 → 80: still below, no second event
    await fundedAccount(test, 'ev_low', 100); // 180
    await spend('ev_low', 100); // 180 → 80: crosses again
    await spend('ev_low', 80); // → 0
    const list = (await eventsOf('ev_low')).filter((event) => event.type.startsWith('balance.'));
    assert.deepEqual(typesOf(list), ['balance.low', 'balance.low', 'balance.depleted']);
    assert.deepEqual(list[0].data, { available: 90, threshold: 100, previous_available: 150 });
    assert.equal(list[1].data.available, 80);
    const off = await test.call('PUT', '/v1/accounts/ev_low/low-balance-threshold', { threshold: null });
    assert.equal(off.body.low_balance_threshold, null);
  });

  it('writes one balance.low per threshold crossed: a change crossing both the top-up threshold and low_balance_threshold writes two', async () => {
    await fundedAccount(test, 'ev_both', 1000);
    await test.call('PUT', '/v1/accounts/ev_both/low-balance-threshold', { threshold: 800 });
    // The column auto top-up's setting keeps (no Stripe here to save the setting through).
    await test.database.db.query(`update accounts set top_up_threshold = 500 where id = 'ev_both'`);
    await spend('ev_both', 600); // 1000 → 400: crosses 800, then 500
    await spend('ev_both', 100); // 400 → 300: crosses nothing
    await fundedAccount(test, 'ev_both', 400); // 700: above 500, below 800
    await spend('ev_both', 250); // 700 → 450: crosses 500 only
    await test.database.db.query(`update accounts set top_up_threshold = 800 where id = 'ev_both'`);
    await fundedAccount(test, 'ev_both', 550); // 1000
    await spend('ev_both', 300); // 1000 → 700: both thresholds are 800, one crossing
    const low = (await eventsOf('ev_both')).filter((event) => event.type === 'balance.low');
    assert.deepEqual(
      low.map((event) => [event.data.previous_available, event.data.available, event.data.threshold]),
      [
        [1000, 400, 800],
        [1000, 400, 500],
        [700, 450, 500],
        [1000, 700, 800],
      ],
    );
  });

  it('writes hold.expired when the sweep expires a hold, and grant.expired when a grant expires', async () => {
    await fundedAccount(test, 'ev_hold', 100, { expires_at: new Date(test.clock.now().getTime() + 7200_000).toISOString() });
    const hold = await test.call('POST', '/v1/accounts/ev_hold/holds', {
      amount: 40,
      idempotency_key: 'ev-hold-1',
      expires_in_seconds: 60,
    });
    assert.equal(hold.status, 201);
    test.clock.advanceSeconds(120);
    await test.parts.sweeper.sweep();
    test.clock.advanceSeconds(7200);
    await test.parts.sweeper.sweep();
    const list = await eventsOf('ev_hold');
    assert.deepEqual(typesOf(list), ['grant.created', 'hold.expired', 'balance.depleted', 'grant.expired']);
    assert.equal(list[1].data.hold_id, hold.body.hold_id);
    assert.equal(list[3].data.credits, 100);
  });

  it('writes hold.expired for a priced hold with its meter, quantities, cost and rate card version', async () => {
    await fundedAccount(test, 'ev_priced_hold', 10);
    const hold = await test.call('POST', '/v1/accounts/ev_priced_hold/holds', {
      meter: 'openai/gpt-5',
      quantities: { input_tokens: 1000, output_tokens: 2000 },
      idempotency_key: 'ev-priced-hold',
      expires_in_seconds: 60,
    });
    assert.equal(hold.status, 201);
    test.clock.advanceSeconds(120);
    await test.parts.sweeper.sweep();
    const expired = (await eventsOf('ev_priced_hold')).find((event) => event.type === 'hold.expired');
    assert.deepEqual(expired?.data, {
      hold_id: hold.body.hold_id,
      amount: 3,
      released: 3,
      meter: 'openai/gpt-5',
      quantities: { input_tokens: 1000, output_tokens: 2000 },
      cost: '2.125',
      rate_card: hold.body.rate_card,
    });
  });

  it('writes account.in_debt and credits.clawed_back for a clawback that leaves debt', async () => {
    await fundedAccount(test, 'ev_debt', 10);
    await test.database.db.withTransaction(async (client) => {
      await client.query(`select tally_lock_account('ev_debt', null)`);
      await client.query(`select tally_clawback('ev_debt', 25, 'refund:re_ev', null, '{}', null)`);
    });
    const list = await eventsOf('ev_debt');
    assert.deepEqual(typesOf(list), ['grant.created', 'balance.depleted', 'account.in_debt', 'credits.clawed_back']);
    assert.equal(list[2].data.debt, 15);
    assert.equal(list[3].data.credits, 25);
  });
});

describe('reading events', () => {
  it('pages in sequence order with after, and the same after answers the same events (replayable)', async () => {
    await fundedAccount(test, 'ev_page', 5);
    for (let index = 0; index < 4; index += 1) await fundedAccount(test, 'ev_page', 5);
    const all = await events('?limit=500');
    const sequences = all.map((event) => event.sequence);
    assert.deepEqual(
      sequences,
      [...sequences].sort((a, b) => a - b),
    );
    assert.equal(new Set(sequences).size, sequences.length);
    await settleEvents(test);
    const first = await test.call('GET', '/v1/events?limit=2');
    const again = await test.call('GET', '/v1/events?limit=2');
    assert.deepEqual(again.body, first.body);
    const second = await test.call('GET', `/v1/events?limit=2&after=${first.body.next_after}`);
    assert.deepEqual(second.body.events, all.slice(2, 4));
    const end = await test.call('GET', `/v1/events?after=${all[all.length - 1].sequence}`);
    assert.deepEqual(end.body, { events: [], next_after: all[all.length - 1].sequence });
  });

  it('lets the viewer key read, and refuses a missing key and bad paging', async () => {
    assert.ok((await events('', viewerKey)).length > 0);
    assert.ok((await events('', adminKey)).length > 0);
    assert.equal((await test.call('GET', '/v1/events', undefined, null)).status, 401);
    for (const query of ['?limit=0', '?limit=501', '?after=-1', '?after=x', '?account_id=bad%20id', '?other=1']) {
      const answer = await test.call('GET', `/v1/events${query}`);
      assert.equal(answer.status, 400, query);
      assert.equal(answer.body.error.code, 'invalid_request');
    }
    assert.equal((await test.call('PUT', '/v1/accounts/nobody/low-balance-threshold', { threshold: 5 })).status, 404);
    assert.equal((await test.call('PUT', '/v1/accounts/ev_page/low-balance-threshold', { threshold: 0 })).status, 400);
  });

  it('never lets a reader pass an event whose transaction commits after a later one was read', async () => {
    await fundedAccount(test, 'ev_race', 0);
    const slow = new pg.Client({ connectionString: test.database.url });
    const fast = new pg.Client({ connectionString: test.database.url });
    await slow.connect();
    await fast.connect();
    try {
      const start = (await events('?limit=500')).at(-1)?.sequence ?? 0;
      // The slow transaction writes its event first (the lower id), then waits.
      await slow.query('begin');
      await slow.query(`select tally_event('grant.created', 'ev_race', '{"n": "slow"}', null)`);
      await fast.query(`select tally_event('grant.created', 'ev_race', '{"n": "fast"}', null)`);
      const whileOpen = await test.call('GET', `/v1/events?after=${start}&account_id=ev_race`);
      assert.deepEqual(whileOpen.body.events, [], 'nothing past a running older transaction is shown');
      assert.equal(whileOpen.body.next_after, start);
      await slow.query('commit');
      // Other databases of the server may have transactions of their own running (the test files
      // run in parallel); the events appear once those older ones finish too.
      let seen: string[] = [];
      for (let attempt = 0; attempt < 200 && seen.length < 2; attempt += 1) {
        const after = await test.call('GET', `/v1/events?after=${start}&account_id=ev_race`);
        seen = after.body.events.map((event: any) => event.data.n);
        if (seen.length < 2) await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.deepEqual(seen, ['slow', 'fast']);
    } finally {
      await slow.end();
      await fast.end();
    }
  });

  it('a reader polling during 200 writers, 40 at once, sees every committed event once, in order', async () => {
    await fundedAccount(test, 'ev_many', 0);
    const start = (await events('?limit=500')).at(-1)?.sequence ?? 0;
    const committed = new Set<string>();
    const seen: any[] = [];
    let cursor = start;
    let writing = true;
    const reader = (async () => {
      while (writing) {
        const page = await test.call('GET', `/v1/events?after=${cursor}&limit=50`);
        seen.push(...page.body.events);
        cursor = page.body.next_after;
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
    })();
    // 200 writers in waves of 40 connections: PostgreSQL's default max_connections is 100, and
    // other test files run beside this one.
    const writer = async (index: number) => {
      const client = new pg.Client({ connectionString: test.database.url });
      await client.connect();
      try {
        await client.query('begin');
        await client.query(`select tally_event('grant.created', 'ev_many', $1, null)`, [{ n: index }]);
        await new Promise((resolve) => setTimeout(resolve, (index * 7) % 40));
        if (index % 5 === 0) {
          await client.query('rollback');
        } else {
          await client.query('commit');
          committed.add(String(index));
        }
      } finally {
        await client.end();
      }
    };
    for (let wave = 0; wave < 5; wave += 1) {
      await Promise.all(Array.from({ length: 40 }, (_, index) => writer(wave * 40 + index)));
    }
    writing = false;
    await reader;
    await settleEvents(test);
    for (;;) {
      const page = await test.call('GET', `/v1/events?after=${cursor}&limit=500`);
      if (page.body.events.length === 0) break;
      seen.push(...page.body.events);
      cursor = page.body.next_after;
    }
    const mine = seen.filter((event) => event.account_id === 'ev_many');
    assert.deepEqual(new Set(mine.map((event) => String(event.data.n))), committed);
    assert.equal(mine.length, committed.size, 'each event once');
    const sequences = seen.map((event) => event.sequence);
    assert.deepEqual(
      sequences,
      [...sequences].sort((a, b) => a - b),
    );
  });
});
