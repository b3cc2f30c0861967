import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Database } from '../../src/db/database.js';
import { DatabaseBusyError } from '../../src/db/errors.js';
import { reconcile, reconcileIfDue } from '../../src/ops/reconcile.js';
import type { StripeGateway } from '../../src/stripe/gateway.js';
import { createTestApp, testCatalog, type TestApp } from '../helpers/app.js';

// Reconciliation at scale: a run has its own time budget rather than the request statement
// timeout, a failed run is alerted and the schedule backs off instead of retrying every tick,
// and Stripe is paged before the database snapshot is taken, never while it is held open.
let test: TestApp;
const catalog = testCatalog();
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

describe('reconciliation at scale', () => {
  // First: the schedule's run is due only while no run has been made in this database.
  it('alerts a failed run and backs off before the next scheduled one', async () => {
    // Proves that a run out of budget is recorded as failed with an alert, and that the
    // scheduled run does not start again on the next tick (it used to, every 30 s, forever).
    const options = { trigger: 'schedule' as const, stripe: false, gateway: undefined, catalog, timeSecondsMax: 0.000001 };
    await assert.rejects(reconcileIfDue(test.database.db, options, 24), /time budget/);
    const alert = await test.database.db.query<{ severity: string; message: string }>(
      `select severity, message from alerts where kind = 'reconciliation_failed'`,
    );
    assert.equal(alert.rows.length, 1);
    assert.match(alert.rows[0]?.message ?? '', /time budget/);
    const runs = async () =>
      (await test.database.db.query<{ count: number }>(`select count(*)::int as count from reconciliation_runs`)).rows[0]?.count;
    const before = await runs();
    assert.equal(await reconcileIfDue(test.database.db, options, 24), undefined, 'not due again at once');
    assert.equal(await runs(), before, 'no new run');
    const failed = await test.database.db.query<{ status: string }>(`select status from reconciliation_runs order by id desc limit 1`);
    assert.equal(failed.rows[0]?.status, 'failed');
  });

  it('runs under its own time budget, not the pool statement timeout', async (t) => {
    // Proves that a ledger whose full scans outlast the statement timeout of requests (here
    // 20 ms, standing for the 10 s one against tens of millions of entries) still reconciles.
    await test.call('PUT', '/v1/accounts/budget-big', {});
    await test.database.db.query(
      `insert into entries (account_id, kind, amount, balance_after, idempotency_key, actor)
       select 'budget-big', 'usage', 0, 0, 'budget-' || i, 'app' from generate_series(1, 300000) i`,
    );
    const tight = new Database({
      url: test.database.url,
      poolSize: 2,
      statementTimeoutMilliseconds: 20,
      applicationName: 'tally-test-tight',
    });
    try {
      const slow = await tight.query(`select count(*) from entries e cross join lateral unnest(e.grant_ids) g`).then(
        () => 'finished',
        (error: unknown) => error,
      );
      if (slow === 'finished') {
        // Nothing to prove on a machine that scans it within the timeout.
        t.skip('this machine scans 300,000 entries within 20 ms');
        return;
      }
      // A statement past the pool's timeout is answered database_busy, its cause the SQLSTATE.
      assert.ok(slow instanceof DatabaseBusyError, `a full scan outlasts the pool timeout here: ${String(slow)}`);
      assert.equal((slow.cause as { code?: string }).code, '57014');
      const report = await reconcile(tight, { trigger: 'cli', stripe: false, gateway: undefined, catalog });
      assert.equal(report.finding_count, 0, JSON.stringify(report.findings));
      assert.ok(report.summary.entries >= 300000);
    } finally {
      await tight.close();
    }
  });

  it('pages Stripe with no database snapshot open', async () => {
    // Proves that the Stripe lists are read before the run's repeatable-read transaction
    // starts: while Stripe is asked, no connection of this database sits in a transaction.
    const asked: string[] = [];
    const gateway = {
      async call(name: string): Promise<unknown[]> {
        const open = await test.database.db.query<{ count: number }>(
          `select count(*)::int as count from pg_stat_activity
           where datname = current_database() and pid <> pg_backend_pid() and state like 'idle in transaction%'`,
        );
        asked.push(`${name}: ${open.rows[0]?.count} open`);
        return [];
      },
    } as unknown as StripeGateway;
    const report = await reconcile(test.database.db, { trigger: 'api', stripe: true, gateway, catalog });
    assert.deepEqual(asked, ['invoices.list: 0 open', 'refunds.list: 0 open']);
    assert.equal(report.with_stripe, true);
  });
});
