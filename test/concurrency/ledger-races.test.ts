import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Ledger } from '../../src/ledger/ledger.js';
import { Database } from '../../src/db/database.js';
import { createTestApp, fundedAccount, ledgerFacts, type TestApp } from '../helpers/app.js';
import { startConnectionKiller } from '../helpers/database.js';

// Real parallel connections: the pool is larger than the number of requests in flight that
// matter, so transactions truly race inside PostgreSQL.
let test: TestApp;
before(async () => {
  test = await createTestApp({ poolSize: 50 });
});
after(async () => {
  await test.close();
});

const countBy = <T>(items: T[], key: (item: T) => string | number): Record<string, number> =>
  items.reduce<Record<string, number>>((counts, item) => {
    const name = String(key(item));
    counts[name] = (counts[name] ?? 0) + 1;
    return counts;
  }, {});

async function assertReconciled(accountId: string): Promise<void> {
  const facts = await ledgerFacts(test, accountId);
  assert.equal(facts.available - facts.debt, facts.entry_sum, `${accountId}: available - debt equals the sum of entries`);
  assert.equal(facts.available, facts.grant_sum, `${accountId}: available equals the grants' remaining`);
}

describe('races', () => {
  it('accepts exactly 100 of 200 parallel spends of 10 against 1000 (no overdraft)', async () => {
    await fundedAccount(test, 'race-1', 1000);
    const responses = await Promise.all(
      Array.from({ length: 200 }, (_, index) =>
        test.call('POST', '/v1/accounts/race-1/usage', { amount: 10, idempotency_key: `race-1-${index}` }),
      ),
    );
    assert.deepEqual(
      countBy(responses, (response) => response.status),
      { 200: 100, 402: 100 },
    );
    assert.equal((await test.call('GET', '/v1/accounts/race-1/balance')).body.available, 0);
    await assertReconciled('race-1');
  });

  it('turns one key sent 50 times in parallel into one entry and 49 replays', async () => {
    await fundedAccount(test, 'race-2', 1000);
    const before = await ledgerFacts(test, 'race-2');
    const responses = await Promise.all(
      Array.from({ length: 50 }, () => test.call('POST', '/v1/accounts/race-2/usage', { amount: 7, idempotency_key: 'race-2-once' })),
    );
    assert.ok(responses.every((response) => response.status === 200));
    assert.deepEqual(
      countBy(responses, (response) => String(response.body.replayed)),
      { false: 1, true: 49 },
    );
    assert.equal(new Set(responses.map((response) => response.body.entry_id)).size, 1);
    const after = await ledgerFacts(test, 'race-2');
    assert.equal(after.entry_count, before.entry_count + 1);
    assert.equal(after.available, 993);
  });

  it('lets exactly one of a racing capture and void resolve each hold', async () => {
    await fundedAccount(test, 'race-3', 1000);
    for (let round = 0; round < 20; round += 1) {
      const hold = await test.call('POST', '/v1/accounts/race-3/holds', { amount: 10, idempotency_key: `race-3-${round}` });
      const [capture, voided] = await Promise.all([
        test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 4 }),
        test.call('POST', `/v1/holds/${hold.body.hold_id}/void`),
      ]);
      assert.deepEqual([capture.status, voided.status].sort(), [200, 409], `round ${round}`);
    }
    const holds = await test.database.db.query<{ status: string; count: number }>(
      `select status, count(*)::int as count from holds where account_id = 'race-3' group by status`,
    );
    assert.equal(
      holds.rows.reduce((sum, row) => sum + row.count, 0),
      20,
    );
    const resolutions = await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from entries where account_id = 'race-3' and kind in ('capture', 'release') and hold_id is not null
       group by hold_id having count(*) > 2`,
    );
    assert.equal(resolutions.rows.length, 0, 'no hold resolved twice');
    await assertReconciled('race-3');
  });

  it('spends once per account when one key races on different accounts, each several times (keys are scoped to their account)', async () => {
    const accounts = Array.from({ length: 10 }, (_, index) => `race-4-${index}`);
    for (const account of accounts) await fundedAccount(test, account, 100);
    const responses = await Promise.all(
      accounts.flatMap((account) =>
        Array.from({ length: 3 }, () =>
          test.call('POST', `/v1/accounts/${account}/usage`, { amount: 1, idempotency_key: 'race-4-shared' }),
        ),
      ),
    );
    assert.deepEqual(
      countBy(responses, (response) => response.status),
      { 200: 30 },
    );
    assert.deepEqual(
      countBy(responses, (response) => String(response.body.replayed)),
      { false: 10, true: 20 },
    );
    for (const account of accounts) {
      assert.equal((await test.call('GET', `/v1/accounts/${account}/balance`)).body.available, 99, account);
      await assertReconciled(account);
    }
  });

  it('never lets a deadlock or serialization failure reach a client when batches overlap', async () => {
    const accounts = Array.from({ length: 8 }, (_, index) => `race-5-${index}`);
    for (const account of accounts) await fundedAccount(test, account, 500);
    const batch = (round: number) => {
      // Each batch names the accounts in another order; the database locks them in id order.
      const shuffled = [...accounts].sort(() => Math.random() - 0.5);
      return test.call('POST', '/v1/usage/batch', {
        events: shuffled.map((account, index) => ({ account_id: account, amount: 1, idempotency_key: `race-5-${round}-${index}` })),
      });
    };
    const singles = (round: number) =>
      test.call('POST', `/v1/accounts/${accounts[round % 8]}/usage`, { amount: 1, idempotency_key: `race-5-single-${round}` });
    const responses = await Promise.all([
      ...Array.from({ length: 30 }, (_, round) => batch(round)),
      ...Array.from({ length: 30 }, (_, round) => singles(round)),
    ]);
    assert.ok(
      responses.every((response) => response.status === 200),
      JSON.stringify(responses.find((response) => response.status !== 200)),
    );
    for (const account of accounts) await assertReconciled(account);
    const spent = accounts.map(async (account) => 500 - (await test.call('GET', `/v1/accounts/${account}/balance`)).body.available);
    const total = (await Promise.all(spent)).reduce((sum, value) => sum + value, 0);
    assert.equal(total, 30 * 8 + 30);
  });

  it('loses no update across random concurrent operations from two processes', async () => {
    // A second Ledger with its own pool stands in for a second Tally process on the database.
    const otherDb = new Database({ url: test.database.url, poolSize: 20, statementTimeoutMilliseconds: 30_000 });
    const other = new Ledger(otherDb, { clock: test.clock.now, adjustmentCreditsMax: 100_000 });
    try {
      const accounts = ['race-6-a', 'race-6-b', 'race-6-c'];
      for (const account of accounts) await fundedAccount(test, account, 300);
      const expected: Record<string, number> = Object.fromEntries(accounts.map((account) => [account, 300]));
      const operations = Array.from({ length: 300 }, async (_, index) => {
        const ledger = index % 2 === 0 ? test.ledger : other;
        const account = accounts[index % 3] ?? 'race-6-a';
        const amount = 1 + (index % 7);
        const kind = index % 5;
        if (kind === 0) {
          const outcome = await ledger.grant(account, {
            amount,
            source: 'promo',
            reason: 'race',
            idempotency_key: `race-6-g-${index}`,
            priority: 0,
          });
          if (outcome.status === 201) expected[account] = (expected[account] ?? 0) + amount;
        } else if (kind === 1) {
          const outcome = await ledger.hold(account, { amount, idempotency_key: `race-6-h-${index}`, expires_in_seconds: 600 }, 'app');
          if (outcome.status === 201) {
            const captured = await ledger.capture(String(outcome.body.hold_id), amount - 1, 'app');
            assert.equal(captured.captured, amount - 1);
            expected[account] = (expected[account] ?? 0) - (amount - 1);
          }
        } else {
          const outcome = await ledger.usage(account, { amount, idempotency_key: `race-6-u-${index}` }, 'app');
          if (outcome.status === 200) expected[account] = (expected[account] ?? 0) - amount;
          else assert.equal(outcome.status, 402);
        }
      });
      await Promise.all(operations);
      for (const account of accounts) {
        assert.equal((await test.ledger.balance(account)).available, expected[account], account);
        await assertReconciled(account);
      }
    } finally {
      await otherDb.close();
    }
  });
});

describe('a sick database', () => {
  it('never overdraws or spends twice while the database keeps killing connections, with clients retrying 503s', async () => {
    const accounts = ['sick-1', 'sick-2', 'sick-3', 'sick-4'];
    for (const accountId of accounts) await fundedAccount(test, accountId, 1000);
    const killer = await startConnectionKiller(test.database.url);
    // 400 spends of 10 (100 per account of 1000 credits) through the HTTP route and its group
    // commit; a client that gets 503 sends the same request again, as it should.
    let refused = 0;
    const spend = async (index: number): Promise<{ status: number; body: any }> => {
      const accountId = accounts[index % accounts.length] ?? 'sick-1';
      for (;;) {
        const response = await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 10, idempotency_key: `sick-${index}` });
        if (response.status !== 503) return response;
        refused += 1;
        await sleep(20);
      }
    };
    const responses = await Promise.all(Array.from({ length: 400 }, (_, index) => spend(index)));
    const killed = await killer.stop();
    assert.ok(killed > 0, 'connections were killed');
    assert.deepEqual(
      countBy(responses, (response) => response.status),
      { 200: 400 },
      'every spend fits, so every spend is accepted exactly once',
    );
    for (const accountId of accounts) {
      const facts = await ledgerFacts(test, accountId);
      assert.equal(facts.available, 0, `${accountId}: 1000 - 100 × 10`);
      assert.equal(facts.entry_count, 101, `${accountId}: the funding grant and 100 usage entries, none twice`);
      await assertReconciled(accountId);
    }
    // Asked again, each key answers its first outcome.
    const again = await Promise.all(Array.from({ length: 400 }, (_, index) => spend(index)));
    assert.ok(again.every((response) => response.status === 200 && response.body.replayed === true));
    console.log(`# ${killed} connections killed, ${refused} spends refused with 503 and sent again`);
  });
});
