import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Sweeper } from '../../src/ledger/sweeper.js';
import { raiseAlert } from '../../src/ops/alerts.js';
import { createTestApp, fundedAccount, ledgerFacts, type TestApp } from '../helpers/app.js';

let test: TestApp;
before(async () => {
  test = await createTestApp({ adjustmentCreditsMax: 1000 });
});
after(async () => {
  await test.close();
});

/** Every account's materialized balance equals the fold of its entries and of its grants. */
async function assertReconciled(accountId: string): Promise<void> {
  const facts = await ledgerFacts(test, accountId);
  assert.equal(facts.available - facts.debt, facts.entry_sum, 'available - debt equals the sum of entries');
  assert.equal(facts.available, facts.grant_sum, 'available equals the sum of grants remaining');
}

describe('usage', () => {
  it('spends credits and answers the entry and what is left', async () => {
    await fundedAccount(test, 'use-1', 100);
    const response = await test.call('POST', '/v1/accounts/use-1/usage', {
      amount: 30,
      idempotency_key: 'use-1-a',
      description: 'gpt tokens',
      metadata: { model: 'x' },
    });
    assert.equal(response.status, 200);
    assert.equal(response.body.amount, 30);
    assert.equal(response.body.available, 70);
    assert.equal(response.body.replayed, false);
    assert.match(response.body.entry_id, /^entry_\d+$/);
    await assertReconciled('use-1');
  });

  it('answers a replayed key exactly as the first time, with replayed: true, and spends once', async () => {
    const first = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 10, idempotency_key: 'use-1-b' });
    const again = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 10, idempotency_key: 'use-1-b' });
    assert.equal(again.status, 200);
    assert.deepEqual(again.body, { ...first.body, replayed: true });
    assert.equal((await test.call('GET', '/v1/accounts/use-1/balance')).body.available, 60);
  });

  it('refuses more than available with 402 and the available amount, and writes no entry', async () => {
    const before = await ledgerFacts(test, 'use-1');
    const response = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 61, idempotency_key: 'use-1-c' });
    assert.equal(response.status, 402);
    assert.equal(response.body.error.code, 'insufficient_credits');
    assert.equal(response.body.error.available, 60);
    assert.equal((await ledgerFacts(test, 'use-1')).entry_count, before.entry_count);
  });

  it('answers 402 again for a replayed refused key, even after a top-up', async () => {
    await test.admin('POST', '/v1/accounts/use-1/grants', {
      amount: 1000,
      source: 'promo',
      reason: 'top-up',
      idempotency_key: 'use-1-topup',
    });
    const replay = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 61, idempotency_key: 'use-1-c' });
    assert.equal(replay.status, 402);
    assert.equal(replay.body.error.available, 60);
  });

  it('answers 409 idempotency_conflict for the same key with another amount or operation on the same account, and changes nothing', async () => {
    const before = await ledgerFacts(test, 'use-1');
    const otherAmount = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 11, idempotency_key: 'use-1-b' });
    assert.equal(otherAmount.status, 409);
    assert.equal(otherAmount.body.error.code, 'idempotency_conflict');
    assert.equal(otherAmount.body.error.idempotency_key, 'use-1-b');
    const otherDescription = await test.call('POST', '/v1/accounts/use-1/usage', {
      amount: 10,
      idempotency_key: 'use-1-b',
      description: 'another payload',
    });
    assert.equal(otherDescription.status, 409, 'the payload is more than its amount');
    const otherOperation = await test.call('POST', '/v1/accounts/use-1/holds', { amount: 10, idempotency_key: 'use-1-b' });
    assert.equal(otherOperation.status, 409);
    assert.equal(otherOperation.body.error.code, 'idempotency_conflict');
    const grantUnderUsageKey = await test.admin('POST', '/v1/accounts/use-1/grants', {
      amount: 5,
      source: 'promo',
      reason: 'r',
      idempotency_key: 'use-1-b',
    });
    assert.equal(grantUnderUsageKey.status, 409);
    const usageUnderRefusedKey = await test.call('POST', '/v1/accounts/use-1/holds', { amount: 61, idempotency_key: 'use-1-c' });
    assert.equal(usageUnderRefusedKey.status, 409, 'a refused usage key is taken for other operations too');
    assert.deepEqual(await ledgerFacts(test, 'use-1'), before);
  });

  it('treats the same key sent for another account as another request (keys are scoped to their account)', async () => {
    await fundedAccount(test, 'use-2', 100);
    const before1 = await ledgerFacts(test, 'use-1');
    const first = await test.call('POST', '/v1/accounts/use-1/usage', { amount: 1, idempotency_key: 'shared-key' });
    assert.equal(first.status, 200);
    const other = await test.call('POST', '/v1/accounts/use-2/usage', { amount: 10, idempotency_key: 'shared-key' });
    assert.equal(other.status, 200, 'another account, another request: no conflict');
    assert.equal(other.body.replayed, false);
    assert.equal(other.body.available, 90);
    assert.notEqual(other.body.entry_id, first.body.entry_id);
    const replayed = await test.call('POST', '/v1/accounts/use-2/usage', { amount: 10, idempotency_key: 'shared-key' });
    assert.deepEqual(replayed.body, { ...other.body, replayed: true });
    // A refusal on one account does not bind the key on another, and the reverse.
    const refused = await test.call('POST', '/v1/accounts/use-2/usage', { amount: 1000, idempotency_key: 'use-1-b' });
    assert.equal(refused.status, 402);
    assert.equal(refused.body.error.replayed, undefined);
    const held = await test.call('POST', '/v1/accounts/use-2/holds', { amount: 5, idempotency_key: 'use-1-c' });
    assert.equal(held.status, 201);
    assert.equal((await ledgerFacts(test, 'use-1')).entry_count, before1.entry_count + 1, 'use-1 spent only its own request');
    assert.equal((await test.call('GET', '/v1/accounts/use-2/balance')).body.available, 85);
    await assertReconciled('use-1');
    await assertReconciled('use-2');
  });
});

describe('spend order and expiry', () => {
  it('spends by priority, then earliest expiry (never-expiring last), then oldest', async () => {
    await fundedAccount(test, 'order-1', 0);
    const soon = new Date(test.clock.now().getTime() + 3600_000).toISOString();
    const later = new Date(test.clock.now().getTime() + 7200_000).toISOString();
    const grant = async (key: string, amount: number, extra: Record<string, unknown>) =>
      (
        await test.admin('POST', '/v1/accounts/order-1/grants', {
          amount,
          source: 'promo',
          reason: 'order',
          idempotency_key: key,
          ...extra,
        })
      ).body.id as string;
    const never = await grant('o-never', 10, {});
    const laterId = await grant('o-later', 10, { expires_at: later });
    const soonId = await grant('o-soon', 10, { expires_at: soon });
    const urgent = await grant('o-urgent', 10, { priority: 0 });
    const lowPriority = await grant('o-low', 10, { priority: 5, expires_at: soon });
    const account = await test.call('GET', '/v1/accounts/order-1');
    assert.deepEqual(
      account.body.grants.map((g: { id: string }) => g.id),
      [soonId, laterId, never, urgent, lowPriority],
    );
    const spend = await test.call('POST', '/v1/accounts/order-1/usage', { amount: 25, idempotency_key: 'o-spend' });
    assert.equal(spend.status, 200);
    const entries = await test.call('GET', '/v1/accounts/order-1/ledger?limit=1');
    assert.deepEqual(entries.body.entries[0].grant_ids, [soonId, laterId, never]);
    const remaining = Object.fromEntries(
      (await test.call('GET', '/v1/accounts/order-1')).body.grants.map((g: { id: string; remaining: number }) => [g.id, g.remaining]),
    );
    assert.deepEqual(remaining, { [never]: 5, [urgent]: 10, [lowPriority]: 10 });
  });

  it('stops counting a grant the moment it expires, and records an expire entry', async () => {
    await fundedAccount(test, 'exp-1', 0);
    const expiresAt = new Date(test.clock.now().getTime() + 60_000).toISOString();
    await test.admin('POST', '/v1/accounts/exp-1/grants', {
      amount: 40,
      source: 'promo',
      reason: 'short',
      idempotency_key: 'exp-1-g',
      expires_at: expiresAt,
    });
    await test.admin('POST', '/v1/accounts/exp-1/grants', { amount: 5, source: 'promo', reason: 'long', idempotency_key: 'exp-1-g2' });
    assert.equal((await test.call('GET', '/v1/accounts/exp-1/balance')).body.available, 45);
    test.clock.advanceSeconds(60);
    assert.equal(
      (await test.call('GET', '/v1/accounts/exp-1/balance')).body.available,
      5,
      'no sweep has run, yet the grant no longer counts',
    );
    const refused = await test.call('POST', '/v1/accounts/exp-1/usage', { amount: 6, idempotency_key: 'exp-1-u' });
    assert.equal(refused.status, 402);
    const ledger = await test.call('GET', '/v1/accounts/exp-1/ledger');
    const expire = ledger.body.entries.find((entry: { kind: string }) => entry.kind === 'expire');
    assert.equal(expire.amount, -40);
    assert.equal(expire.actor, 'system');
    await assertReconciled('exp-1');
  });

  it('refuses an admin grant whose expiry is already past', async () => {
    const response = await test.admin('POST', '/v1/accounts/exp-1/grants', {
      amount: 5,
      source: 'promo',
      reason: 'late',
      idempotency_key: 'exp-1-past',
      expires_at: '2000-01-01T00:00:00Z',
    });
    assert.equal(response.status, 400);
    assert.equal(response.body.error.field, 'expires_at');
  });
});

describe('holds', () => {
  it('holds credits, then captures part and releases the rest', async () => {
    await fundedAccount(test, 'hold-1', 100);
    const hold = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 40, idempotency_key: 'hold-1-a' });
    assert.equal(hold.status, 201);
    assert.equal(hold.body.available, 60);
    assert.equal(hold.body.replayed, false);
    assert.equal(Date.parse(hold.body.expires_at) - test.clock.now().getTime(), 900_000, 'default lifetime 900 s');
    assert.deepEqual((await test.call('GET', '/v1/accounts/hold-1/balance')).body, {
      account_id: 'hold-1',
      available: 60,
      held: 40,
      debt: 0,
    });
    const replay = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 40, idempotency_key: 'hold-1-a' });
    assert.equal(replay.status, 201);
    assert.deepEqual(replay.body, { ...hold.body, replayed: true });
    const capture = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 25 });
    assert.equal(capture.status, 200);
    assert.deepEqual(capture.body, { captured: 25, released: 15, available: 75 });
    assert.deepEqual((await test.call('GET', '/v1/accounts/hold-1/balance')).body, {
      account_id: 'hold-1',
      available: 75,
      held: 0,
      debt: 0,
    });
    await assertReconciled('hold-1');
  });

  it('refuses a second resolution with 409 hold_not_pending and its status', async () => {
    const hold = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 5, idempotency_key: 'hold-1-b' });
    assert.equal((await test.call('POST', `/v1/holds/${hold.body.hold_id}/void`)).status, 200);
    const again = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 1 });
    assert.equal(again.status, 409);
    assert.equal(again.body.error.code, 'hold_not_pending');
    assert.equal(again.body.error.status, 'voided');
    const voidAgain = await test.call('POST', `/v1/holds/${hold.body.hold_id}/void`);
    assert.equal(voidAgain.status, 409);
  });

  it('refuses a capture above the hold with 400 capture_exceeds_hold and leaves the hold pending', async () => {
    const hold = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 5, idempotency_key: 'hold-1-c' });
    const response = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 6 });
    assert.equal(response.status, 400);
    assert.equal(response.body.error.code, 'capture_exceeds_hold');
    const capture = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 5 });
    assert.deepEqual(capture.body, { captured: 5, released: 0, available: 70 });
  });

  it('captures zero as a full release', async () => {
    const hold = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 5, idempotency_key: 'hold-1-z' });
    const capture = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 0 });
    assert.deepEqual(capture.body, { captured: 0, released: 5, available: 70 });
  });

  it('refuses a hold above available with 402, an unknown hold with 404, and a lifetime above 86400 s with 400', async () => {
    const tooBig = await test.call('POST', '/v1/accounts/hold-1/holds', { amount: 71, idempotency_key: 'hold-1-d' });
    assert.equal(tooBig.status, 402);
    assert.equal(tooBig.body.error.available, 70);
    assert.equal((await test.call('POST', '/v1/holds/hold_999999/void')).status, 404);
    assert.equal((await test.call('POST', '/v1/holds/nonsense/void')).status, 404);
    const tooLong = await test.call('POST', '/v1/accounts/hold-1/holds', {
      amount: 1,
      idempotency_key: 'hold-1-e',
      expires_in_seconds: 86_401,
    });
    assert.equal(tooLong.status, 400);
    assert.equal(tooLong.body.error.field, 'expires_in_seconds');
  });

  it('expires a hold on time: capture refused as expired, credits released by the sweep', async () => {
    await fundedAccount(test, 'hold-2', 50);
    const hold = await test.call('POST', '/v1/accounts/hold-2/holds', { amount: 20, idempotency_key: 'hold-2-a', expires_in_seconds: 30 });
    test.clock.advanceSeconds(30);
    const late = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 10 });
    assert.equal(late.status, 409);
    assert.equal(late.body.error.status, 'expired');
    assert.equal(await test.ledger.settleDue(100), 1);
    assert.deepEqual((await test.call('GET', '/v1/accounts/hold-2/balance')).body, {
      account_id: 'hold-2',
      available: 50,
      held: 0,
      debt: 0,
    });
    const status = await test.database.db.query<{ status: string }>(`select status from holds where 'hold_' || id = $1`, [
      hold.body.hold_id,
    ]);
    assert.equal(status.rows[0]?.status, 'expired');
    assert.equal(await test.ledger.settleDue(100), 0, 'a second sweep finds nothing');
    await assertReconciled('hold-2');
  });

  it('releases an expired hold by the background sweep, without any request touching the account', async () => {
    await fundedAccount(test, 'hold-sweep', 40);
    const hold = await test.call('POST', '/v1/accounts/hold-sweep/holds', {
      amount: 25,
      idempotency_key: 'hold-sweep-a',
      expires_in_seconds: 5,
    });
    test.clock.advanceSeconds(5);
    const sweeper = new Sweeper(test.ledger, pino({ level: 'silent' }), 1, (alert) => raiseAlert(test.database.db.pool, alert));
    sweeper.start();
    try {
      const deadline = Date.now() + 10_000;
      let status = 'pending';
      while (status === 'pending' && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        const { rows } = await test.database.db.query<{ status: string }>(`select status from holds where 'hold_' || id = $1`, [
          hold.body.hold_id,
        ]);
        status = rows[0]?.status ?? 'missing';
      }
      assert.equal(status, 'expired');
    } finally {
      await sweeper.stop();
    }
    assert.deepEqual((await test.call('GET', '/v1/accounts/hold-sweep/balance')).body, {
      account_id: 'hold-sweep',
      available: 40,
      held: 0,
      debt: 0,
    });
  });

  it('lets released credits of an expired grant expire instead of coming back', async () => {
    await fundedAccount(test, 'hold-3', 0);
    const expiresAt = new Date(test.clock.now().getTime() + 100_000).toISOString();
    await test.admin('POST', '/v1/accounts/hold-3/grants', {
      amount: 30,
      source: 'promo',
      reason: 'r',
      idempotency_key: 'hold-3-g',
      expires_at: expiresAt,
    });
    const hold = await test.call('POST', '/v1/accounts/hold-3/holds', {
      amount: 20,
      idempotency_key: 'hold-3-a',
      expires_in_seconds: 3600,
    });
    test.clock.advanceSeconds(200);
    const released = await test.call('POST', `/v1/holds/${hold.body.hold_id}/void`);
    assert.deepEqual(released.body, { released: 20, available: 0 });
    await assertReconciled('hold-3');
  });
});

describe('usage batch', () => {
  it('answers one result per event, in order, each as the single call would', async () => {
    await fundedAccount(test, 'batch-b', 10);
    await fundedAccount(test, 'batch-a', 10);
    const response = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'batch-b', amount: 6, idempotency_key: 'bt-1' },
        { account_id: 'batch-a', amount: 4, idempotency_key: 'bt-2' },
        { account_id: 'batch-b', amount: 6, idempotency_key: 'bt-3' },
        { account_id: 'batch-ghost', amount: 1, idempotency_key: 'bt-4' },
        { account_id: 'batch-b', amount: 6, idempotency_key: 'bt-1' },
        { account_id: 'batch-a', amount: 5, idempotency_key: 'bt-2' },
      ],
    });
    assert.equal(response.status, 200);
    const results = response.body.results;
    assert.deepEqual(
      results.map((result: { status: number }) => result.status),
      [200, 200, 402, 404, 200, 409],
    );
    assert.equal(results[0].available, 4);
    assert.equal(results[1].available, 6);
    assert.equal(results[2].error.available, 4);
    assert.equal(results[4].replayed, true);
    assert.equal(results[5].error.code, 'idempotency_conflict');
    const single = await test.call('POST', '/v1/accounts/batch-b/usage', { amount: 6, idempotency_key: 'bt-3' });
    assert.equal(single.status, 402, 'the batch stored the refusal as the first outcome');
  });

  it('answers the same key on two accounts as two requests, in one batch and against a stored key', async () => {
    await fundedAccount(test, 'batch-c', 10);
    await fundedAccount(test, 'batch-d', 10);
    const single = await test.call('POST', '/v1/accounts/batch-c/usage', { amount: 1, idempotency_key: 'bt-shared' });
    assert.equal(single.status, 200);
    const response = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'batch-d', amount: 2, idempotency_key: 'bt-shared' },
        { account_id: 'batch-c', amount: 1, idempotency_key: 'bt-shared' },
        { account_id: 'batch-d', amount: 3, idempotency_key: 'bt-shared' },
        { account_id: 'batch-d', amount: 2, idempotency_key: 'bt-shared' },
      ],
    });
    assert.equal(response.status, 200);
    const results = response.body.results;
    assert.deepEqual(
      results.map((result: { status: number }) => result.status),
      [200, 200, 409, 200],
    );
    assert.deepEqual(
      results[0],
      { status: 200, entry_id: results[0].entry_id, amount: 2, available: 8, replayed: false },
      'a new request on batch-d',
    );
    assert.deepEqual(results[1], { status: 200, ...single.body, replayed: true }, 'the replay of the stored spend on batch-c');
    assert.equal(results[2].error.code, 'idempotency_conflict');
    assert.deepEqual(results[3], { ...results[0], replayed: true });
    assert.equal((await test.call('GET', '/v1/accounts/batch-c/balance')).body.available, 9);
    assert.equal((await test.call('GET', '/v1/accounts/batch-d/balance')).body.available, 8);
  });

  it('refuses a malformed batch with 400 naming the event and writes nothing', async () => {
    const before = await ledgerFacts(test, 'batch-a');
    const response = await test.call('POST', '/v1/usage/batch', {
      events: [
        { account_id: 'batch-a', amount: 1, idempotency_key: 'bm-1' },
        { account_id: 'batch-a', amount: 1.5, idempotency_key: 'bm-2' },
      ],
    });
    assert.equal(response.status, 400);
    assert.equal(response.body.error.field, 'events.1.amount');
    assert.deepEqual(await ledgerFacts(test, 'batch-a'), before);
    assert.equal((await test.call('POST', '/v1/usage/batch', { events: [] })).status, 400);
    const tooMany = Array.from({ length: 1001 }, (_, index) => ({ account_id: 'batch-a', amount: 1, idempotency_key: `bm-many-${index}` }));
    assert.equal((await test.call('POST', '/v1/usage/batch', { events: tooMany })).status, 400);
  });
});

describe('ledger', () => {
  it('pages entries newest first with a cursor, and every entry names its actor', async () => {
    await fundedAccount(test, 'page-1', 100);
    for (let index = 0; index < 5; index += 1) {
      await test.call('POST', '/v1/accounts/page-1/usage', { amount: 1, idempotency_key: `page-1-${index}` });
    }
    const first = await test.call('GET', '/v1/accounts/page-1/ledger?limit=4');
    assert.equal(first.body.entries.length, 4);
    assert.ok(first.body.next_cursor);
    const second = await test.call('GET', `/v1/accounts/page-1/ledger?limit=4&cursor=${first.body.next_cursor}`);
    assert.equal(second.body.entries.length, 2);
    assert.equal(second.body.next_cursor, null);
    const all = [...first.body.entries, ...second.body.entries];
    const ids = all.map((entry: { id: string }) => Number(entry.id.slice(6)));
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => b - a),
    );
    assert.deepEqual(
      all.map((entry: { kind: string }) => entry.kind),
      ['usage', 'usage', 'usage', 'usage', 'usage', 'grant'],
    );
    const grantEntry = all[5];
    assert.equal(grantEntry.actor, 'admin');
    assert.equal(grantEntry.reason, 'test funding');
    assert.equal(all[0].actor, 'app');
    assert.equal(all[0].balance_after, 95);
    for (const key of [
      'id',
      'kind',
      'amount',
      'balance_after',
      'grant_ids',
      'idempotency_key',
      'reference',
      'actor',
      'reason',
      'created_at',
    ]) {
      assert.ok(key in grantEntry, `entry has ${key}`);
    }
    assert.equal((await test.call('GET', '/v1/accounts/page-1/ledger?limit=501')).status, 400);
    assert.equal((await test.call('GET', '/v1/accounts/page-1/ledger?limit=0')).status, 400);
  });

  it('refuses to update or delete an entry, in the database itself', async () => {
    await assert.rejects(test.database.db.query(`update entries set amount = amount + 1 where account_id = 'page-1'`), /append-only/);
    await assert.rejects(test.database.db.query(`delete from entries where account_id = 'page-1'`), /append-only/);
    await assert.rejects(test.database.db.query(`truncate entries cascade`), /append-only/);
  });
});

describe('admin grants and adjustments', () => {
  it('grants credits with a reason, replays the key, and refuses another payload under it', async () => {
    await fundedAccount(test, 'adm-1', 0);
    const body = { amount: 50, source: 'admin', reason: 'goodwill', idempotency_key: 'adm-1-g', priority: 3 };
    const grant = await test.admin('POST', '/v1/accounts/adm-1/grants', body);
    assert.equal(grant.status, 201);
    assert.equal(grant.body.source, 'admin');
    assert.equal(grant.body.remaining, 50);
    assert.equal(grant.body.priority, 3);
    for (const key of ['id', 'source', 'amount', 'remaining', 'priority', 'expires_at', 'created_at', 'reference'])
      assert.ok(key in grant.body);
    const replay = await test.admin('POST', '/v1/accounts/adm-1/grants', body);
    assert.equal(replay.status, 201);
    assert.equal(replay.body.id, grant.body.id);
    const conflict = await test.admin('POST', '/v1/accounts/adm-1/grants', { ...body, amount: 51 });
    assert.equal(conflict.status, 409);
    assert.equal((await test.call('GET', '/v1/accounts/adm-1/balance')).body.available, 50);
    const missingReason = await test.admin('POST', '/v1/accounts/adm-1/grants', { amount: 1, source: 'promo', idempotency_key: 'adm-1-x' });
    assert.equal(missingReason.body.error.field, 'reason');
    const badSource = await test.admin('POST', '/v1/accounts/adm-1/grants', {
      amount: 1,
      source: 'subscription',
      reason: 'r',
      idempotency_key: 'adm-1-y',
    });
    assert.equal(badSource.body.error.field, 'source');
  });

  it('adjusts up and down with a reason, audited with before and after', async () => {
    const up = await test.admin('POST', '/v1/accounts/adm-1/adjustments', {
      amount: 20,
      reason: 'support ticket 12',
      idempotency_key: 'adm-1-up',
    });
    assert.equal(up.status, 201);
    assert.equal(up.body.kind, 'adjustment');
    assert.equal(up.body.amount, 20);
    assert.equal(up.body.balance_after, 70);
    assert.equal(up.body.actor, 'admin');
    assert.equal(up.body.reason, 'support ticket 12');
    const down = await test.admin('POST', '/v1/accounts/adm-1/adjustments', {
      amount: -30,
      reason: 'correction',
      idempotency_key: 'adm-1-down',
    });
    assert.equal(down.status, 201);
    assert.equal(down.body.balance_after, 40);
    const audit = await test.database.db.query<{ before: { available: number }; after: { available: number } }>(
      `select before, after from audit_log where account_id = 'adm-1' and action = 'adjustment' order by id`,
    );
    assert.deepEqual(
      audit.rows.map((row) => [row.before.available, row.after.available]),
      [
        [50, 70],
        [70, 40],
      ],
    );
    await assertReconciled('adm-1');
  });

  it('refuses an adjustment above the catalog limit (400) or below available (402), and zero (400)', async () => {
    const before = await ledgerFacts(test, 'adm-1');
    const tooBig = await test.admin('POST', '/v1/accounts/adm-1/adjustments', { amount: 1001, reason: 'r', idempotency_key: 'adm-1-big' });
    assert.equal(tooBig.status, 400);
    assert.equal(tooBig.body.error.code, 'adjustment_exceeds_limit');
    const tooBigDown = await test.admin('POST', '/v1/accounts/adm-1/adjustments', {
      amount: -1001,
      reason: 'r',
      idempotency_key: 'adm-1-big2',
    });
    assert.equal(tooBigDown.body.error.code, 'adjustment_exceeds_limit');
    const overdraw = await test.admin('POST', '/v1/accounts/adm-1/adjustments', {
      amount: -41,
      reason: 'r',
      idempotency_key: 'adm-1-over',
    });
    assert.equal(overdraw.status, 402);
    assert.equal(overdraw.body.error.available, 40);
    const zero = await test.admin('POST', '/v1/accounts/adm-1/adjustments', { amount: 0, reason: 'r', idempotency_key: 'adm-1-zero' });
    assert.equal(zero.status, 400);
    assert.equal(zero.body.error.field, 'amount');
    assert.equal((await ledgerFacts(test, 'adm-1')).entry_count, before.entry_count);
  });
});
