import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { grantOnce, type EffectContext } from '../../src/billing/effect-context.js';
import { ClaimHasher } from '../../src/billing/claim-hasher.js';
import { Ledger } from '../../src/ledger/ledger.js';
import { alertPort } from '../../src/ops/rules.js';
import { TestClock, createTestApp, fundedAccount, ledgerFacts, testCatalog, type TestApp } from '../helpers/app.js';

// An expired grant stays expired: whatever clock expired it (a rollover's early expiry, a
// settle with a later clock), credits released back to it expire at once under their own entry,
// and no path writes `expire:grant_N` twice. A duplicate there was a unique violation on every
// later settle of the account: 500 on every call, forever.
let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

async function assertReconciled(accountId: string): Promise<void> {
  const facts = await ledgerFacts(test, accountId);
  assert.equal(facts.available - facts.debt, facts.entry_sum, 'available - debt equals the sum of entries');
  assert.equal(facts.available, facts.grant_sum, 'available equals the sum of grants remaining');
}

/** A grant of `credits` expiring `seconds` from the test clock's now; answers its numeric id. */
async function expiringGrant(accountId: string, credits: number, seconds: number): Promise<number> {
  const expiresAt = new Date(test.clock.now().getTime() + seconds * 1000).toISOString();
  const granted = await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
    amount: credits,
    source: 'promo',
    reason: 'expiring',
    idempotency_key: `${accountId}-grant`,
    expires_at: expiresAt,
  });
  assert.equal(granted.status, 201);
  return Number(String(granted.body.id).replace('grant_', ''));
}

const expireEntries = async (grantId: number) =>
  (
    await test.database.db.query<{ idempotency_key: string }>(
      `select idempotency_key from entries where idempotency_key like $1 order by id`,
      [`expire:grant_${grantId}%`],
    )
  ).rows.map((row) => row.idempotency_key);

describe('an expired grant stays expired', () => {
  it('survives the reported case: hold, early expiry of the grant, void, then usage after the original expiry', async () => {
    await fundedAccount(test, 'revive-1', 0);
    const grantId = await expiringGrant('revive-1', 1000, 3600);
    const hold = await test.call('POST', '/v1/accounts/revive-1/holds', {
      amount: 500,
      idempotency_key: 'revive-1-hold',
      expires_in_seconds: 7200,
    });
    assert.equal(hold.status, 201);
    await test.database.db.withTransaction(async (client) => {
      await client.query('select tally_lock_account($1, $2)', ['revive-1', test.clock.now()]);
      await client.query('select tally_expire_grant($1, $2)', [grantId, test.clock.now()]);
    });
    const voided = await test.call('POST', `/v1/holds/${hold.body.hold_id}/void`);
    test.clock.advanceSeconds(3601);
    const usage = await test.call('POST', '/v1/accounts/revive-1/usage', { amount: 1, idempotency_key: 'revive-1-use' });
    assert.equal(usage.status, 402, JSON.stringify(usage.body));
    assert.deepEqual(voided.body, { released: 500, available: 0 }, 'the released credits expired with their grant');
    const granted = await test.admin('POST', '/v1/accounts/revive-1/grants', {
      amount: 10,
      source: 'promo',
      reason: 'later',
      idempotency_key: 'revive-1-later',
    });
    assert.equal(granted.status, 201);
    assert.deepEqual(await expireEntries(grantId), [`expire:grant_${grantId}`]);
    await assertReconciled('revive-1');
  });

  it('keeps a grant expired by a settle with a later clock when a hold is voided on an earlier one', async () => {
    await fundedAccount(test, 'revive-2', 0);
    const grantId = await expiringGrant('revive-2', 300, 60);
    const hold = await test.call('POST', '/v1/accounts/revive-2/holds', {
      amount: 100,
      idempotency_key: 'revive-2-hold',
      expires_in_seconds: 3600,
    });
    const laterClock = new TestClock(test.clock.now().getTime() + 120_000);
    const later = new Ledger(test.database.db, { adjustmentCreditsMax: 1000, clock: laterClock.now });
    assert.equal((await later.usage('revive-2', { amount: 1, idempotency_key: 'revive-2-late' }, 'app')).status, 402);
    const voided = await test.call('POST', `/v1/holds/${hold.body.hold_id}/void`);
    assert.equal(voided.status, 200);
    assert.equal(voided.body.available, 0, 'nothing comes back to a grant that has expired');
    const usage = await later.usage('revive-2', { amount: 1, idempotency_key: 'revive-2-after' }, 'app');
    assert.equal(usage.status, 402, JSON.stringify(usage.body));
    assert.deepEqual(await expireEntries(grantId), [`expire:grant_${grantId}`]);
    await assertReconciled('revive-2');
  });

  it('expires a grant that an older release brought back to life under a key of its own', async () => {
    await fundedAccount(test, 'revive-3', 0);
    const grantId = await expiringGrant('revive-3', 200, 3600);
    // Data written by the old tally_release: the grant expired early, then 50 came back to it.
    await test.database.db.withTransaction(async (client) => {
      await client.query('select tally_lock_account($1, $2)', ['revive-3', test.clock.now()]);
      await client.query('select tally_expire_grant($1, $2)', [grantId, test.clock.now()]);
      await client.query('update grants set remaining = 50 where id = $1', [grantId]);
      await client.query(`update accounts set available = available + 50 where id = 'revive-3'`);
      await client.query(
        `insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key, actor)
         values ('revive-3', 'release', 50, 50, array[$1::bigint], array[50::bigint], 'release:legacy', 'system')`,
        [grantId],
      );
    });
    const early = await test.database.db.withTransaction(async (client) => {
      await client.query('select tally_lock_account($1, $2)', ['revive-3', test.clock.now()]);
      return (await client.query<{ expired: number }>('select tally_expire_grant($1, $2) as expired', [grantId, test.clock.now()])).rows[0]
        ?.expired;
    });
    assert.equal(early, 200, "what expired under the grant's own key");
    assert.equal((await test.call('GET', '/v1/accounts/revive-3/balance')).body.available, 0);
    await assertReconciled('revive-3');
    // And the sweep's path (tally_expire_due), for a grant revived the same way.
    await test.database.db.withTransaction(async (client) => {
      await client.query('update grants set remaining = 30 where id = $1', [grantId]);
      await client.query(`update accounts set available = available + 30 where id = 'revive-3'`);
      await client.query(
        `insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key, actor)
         values ('revive-3', 'release', 30, 30, array[$1::bigint], array[30::bigint], 'release:legacy-2', 'system')`,
        [grantId],
      );
    });
    test.clock.advanceSeconds(3601);
    const usage = await test.call('POST', '/v1/accounts/revive-3/usage', { amount: 1, idempotency_key: 'revive-3-use' });
    assert.equal(usage.status, 402, JSON.stringify(usage.body));
    assert.equal((await expireEntries(grantId)).length, 3, 'each expiry under a key of its own');
    await assertReconciled('revive-3');
  });
});

describe('one clock decides expiry', () => {
  it("grants a Stripe effect's credits by the database's clock when no test clock is set, as every ledger call does", async () => {
    await fundedAccount(test, 'clock-1', 0);
    const hasher = new ClaimHasher('clock-test-secret');
    const outcome = await test.database.db.withTransaction(async (client) => {
      const started = (await client.query<{ now: Date }>('select now()')).rows[0]?.now;
      assert.ok(started !== undefined);
      // The grant expires between the transaction's start (the database's clock for everything
      // in it) and the process's clock a moment later: by one clock it is live, by the other not.
      await sleep(300);
      const context: EffectContext = {
        client,
        catalog: testCatalog(),
        hasher,
        alerts: alertPort(testCatalog()),
        prepared: {},
        now: null,
        event: { id: 'evt_clock_1', type: 'invoice.paid', created: 0, object: {} },
      };
      await grantOnce(context, {
        accountId: 'clock-1',
        source: 'subscription',
        credits: 100,
        expiresAt: new Date(started.getTime() + 150),
        key: 'clock-1-grant',
        reference: {},
      });
      return (await client.query<{ available: number }>(`select available from accounts where id = 'clock-1'`)).rows[0]?.available;
    });
    assert.equal(outcome, 100, 'the database clock, which every ledger call in this transaction uses, says the grant is live');
  });
});

it('leaves nothing for reconciliation to find in the accounts above', async () => {
  const report = await test.admin('POST', '/v1/admin/reconcile', {});
  assert.equal(report.status, 200);
  assert.deepEqual(report.body.findings, []);
});
