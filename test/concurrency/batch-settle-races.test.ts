import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { Ledger } from '../../src/ledger/ledger.js';
import { TestClock, createTestApp, fundedAccount, ledgerFacts, type TestApp } from '../helpers/app.js';

// The usage batch decides which accounts to settle only once it holds their locks. Before, it
// chose them from a snapshot taken before locking: a hold voided in between (its credits back
// to a grant whose expiry the batch's clock has passed) went unseen, the batch skipped the
// settle, and available exceeded the live grants it read next: "invariant broken", a 500 where
// a single spend answers 402. These tests race batches against voids and expiring settles.
let test: TestApp;
before(async () => {
  test = await createTestApp({ poolSize: 40 });
});
after(async () => {
  await test.close();
});

/** A ledger whose clock runs `seconds` ahead of the test clock (another process, a later request). */
function ledgerAhead(seconds: number): Ledger {
  const clock = new TestClock(test.clock.now().getTime() + seconds * 1000);
  return new Ledger(test.database.db, { adjustmentCreditsMax: 1000, clock: clock.now });
}

/** An account whose only grant (expiring in 60 s) is wholly held by a hold; answers the hold. */
async function heldAccount(accountId: string, credits: number): Promise<string> {
  await fundedAccount(test, accountId, 0);
  const expiresAt = new Date(test.clock.now().getTime() + 60_000).toISOString();
  const granted = await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
    amount: credits,
    source: 'promo',
    reason: 'r',
    idempotency_key: `${accountId}-g`,
    expires_at: expiresAt,
  });
  assert.equal(granted.status, 201);
  const hold = await test.call('POST', `/v1/accounts/${accountId}/holds`, {
    amount: credits,
    idempotency_key: `${accountId}-h`,
    expires_in_seconds: 3600,
  });
  assert.equal(hold.status, 201);
  return String(hold.body.hold_id);
}

async function assertReconciled(accountId: string): Promise<void> {
  const facts = await ledgerFacts(test, accountId);
  assert.equal(facts.available - facts.debt, facts.entry_sum, `${accountId}: available - debt equals the sum of entries`);
  assert.equal(facts.available, facts.grant_sum, `${accountId}: available equals the grants' remaining`);
}

/** Waits until some backend of this database waits on a lock (the batch, queued behind the void). */
async function untilSomeoneWaitsOnALock(): Promise<void> {
  for (let attempt = 0; attempt < 200; attempt += 1) {
    const { rows } = await test.database.db.query<{ waiting: number }>(
      `select count(*)::int as waiting from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`,
    );
    if ((rows[0]?.waiting ?? 0) > 0) return;
    await sleep(10);
  }
  throw new Error('the batch never waited for the lock');
}

describe('batches racing releases', () => {
  it('answers 402, as a single spend does, when a void commits between the batch snapshot and its lock', async () => {
    const holdId = await heldAccount('race-batch-1', 100);
    const later = ledgerAhead(120);
    let batch: Promise<unknown> | undefined;
    await test.database.db.withTransaction(async (client) => {
      // The void (on the earlier clock: the grant is still live for it) holds the account lock
      // while the batch (on the later clock) starts, takes its snapshot and queues behind it.
      await client.query('select tally_void($1, $2, $3)', [Number(holdId.replace('hold_', '')), 'app', test.clock.now()]);
      batch = later.usageBatch([{ account_id: 'race-batch-1', amount: 10, idempotency_key: 'race-batch-1-u' }], 'app');
      batch.catch(() => undefined);
      await untilSomeoneWaitsOnALock();
    });
    const outcomes = await batch;
    assert.deepEqual(outcomes, [
      { status: 402, body: { error: { code: 'insufficient_credits', message: 'not enough credits available', available: 0 } } },
    ]);
    const single = await later.usage('race-batch-1', { amount: 10, idempotency_key: 'race-batch-1-single' }, 'app');
    assert.equal(single.status, 402);
    await assertReconciled('race-batch-1');
  });

  it('never breaks an invariant when batches race voids and expiring settles on many accounts', async () => {
    const accounts = Array.from({ length: 12 }, (_, index) => `race-batch-many-${index}`);
    const holds = await Promise.all(accounts.map((accountId) => heldAccount(accountId, 50)));
    const later = ledgerAhead(120);
    const voids = holds.map((holdId) => test.call('POST', `/v1/holds/${holdId}/void`));
    const batches = Array.from({ length: 12 }, (_, round) =>
      later.usageBatch(
        accounts.map((accountId) => ({ account_id: accountId, amount: 5, idempotency_key: `${accountId}-b${round}` })),
        'app',
      ),
    );
    const settles = Array.from({ length: 4 }, () => later.settleDue(100));
    const [voided, batched] = await Promise.all([Promise.all(voids), Promise.all(batches), Promise.all(settles)]);
    assert.ok(
      voided.every((response) => response.status === 200),
      JSON.stringify(voided.map((response) => response.status)),
    );
    for (const outcome of batched.flat()) assert.equal(outcome.status, 402, 'by the later clock the grants expired: nothing to spend');
    for (const accountId of accounts) await assertReconciled(accountId);
  });
});
