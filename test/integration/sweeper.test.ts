import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Sweeper } from '../../src/ledger/sweeper.js';
import { raiseAlert } from '../../src/ops/alerts.js';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';

// Proves that one account the sweep cannot settle does not stop the sweep: the accounts after
// it are settled in the same pass; the failing one is tried a bounded number of times, then
// parked, with one alert that names it (repeats count on the same alert).
let test: TestApp;
before(async () => {
  test = await createTestApp();
  // A poisoned account: releasing its holds fails inside the database, as a bug or a bad row would.
  await test.database.db.query(`
    create function test_poisoned_hold() returns trigger language plpgsql as $$
    begin
      if new.account_id = 'sweep-a-poisoned' then
        raise exception 'poisoned hold of %', new.account_id;
      end if;
      return new;
    end $$;
    create trigger test_poisoned_hold before update on holds for each row execute function test_poisoned_hold();`);
});
after(async () => {
  await test.close();
});

const holdStatuses = async (prefix: string) =>
  (
    await test.database.db.query<{ account_id: string; status: string }>(
      `select account_id, status from holds where account_id like $1 order by account_id`,
      [`${prefix}%`],
    )
  ).rows;

describe('sweeper', () => {
  it('moves on past an account it cannot settle, bounds its attempts and raises one alert', async () => {
    // The poisoned account sorts first, so the sweep meets it before the others.
    const accounts = ['sweep-a-poisoned', 'sweep-b-1', 'sweep-c-2'];
    for (const accountId of accounts) {
      await fundedAccount(test, accountId, 50);
      const hold = await test.call('POST', `/v1/accounts/${accountId}/holds`, {
        amount: 20,
        idempotency_key: `${accountId}-h`,
        expires_in_seconds: 5,
      });
      assert.equal(hold.status, 201);
    }
    test.clock.advanceSeconds(5);
    const sweeper = new Sweeper(test.ledger, pino({ level: 'silent' }), 60, (alert) => raiseAlert(test.database.db.pool, alert), {
      attemptCountMax: 3,
      parkSeconds: 3600,
    });
    await sweeper.sweep();
    assert.deepEqual(await holdStatuses('sweep-'), [
      { account_id: 'sweep-a-poisoned', status: 'pending' },
      { account_id: 'sweep-b-1', status: 'expired' },
      { account_id: 'sweep-c-2', status: 'expired' },
    ]);
    const alerts = async () =>
      (
        await test.database.db.query<{ kind: string; severity: string; count: number; account_id: string }>(
          `select kind, severity, count, account_id from alerts where alert_key = 'sweep:sweep-a-poisoned'`,
        )
      ).rows;
    assert.deepEqual(await alerts(), [], 'one failure is not yet an alert');
    const attempts: number[] = [];
    const countingLedger = {
      dueAccounts: (accountCountMax: number, skipped: string[]) => test.ledger.dueAccounts(accountCountMax, skipped),
      settleAccount: async (accountId: string) => {
        attempts.push(1);
        await test.ledger.settleAccount(accountId);
      },
    };
    const counting = new Sweeper(countingLedger, pino({ level: 'silent' }), 60, (alert) => raiseAlert(test.database.db.pool, alert), {
      attemptCountMax: 3,
      parkSeconds: 3600,
    });
    for (let pass = 0; pass < 6; pass += 1) await counting.sweep();
    assert.equal(attempts.length, 3, 'three attempts, then the account is parked');
    assert.deepEqual(await alerts(), [{ kind: 'sweep_failed', severity: 'critical', count: 1, account_id: 'sweep-a-poisoned' }]);
  });

  it('tries a parked account again after its pause, and forgets it once it settles', async () => {
    const attempts: string[] = [];
    let poisoned = true;
    let settled = false;
    const ledger = {
      dueAccounts: async (_accountCountMax: number, skipped: string[]) =>
        settled || skipped.includes('sweep-flaky') ? [] : ['sweep-flaky'],
      settleAccount: async () => {
        attempts.push(poisoned ? 'failed' : 'ok');
        if (poisoned) throw new Error('flaky');
        settled = true;
      },
    };
    const sweeper = new Sweeper(ledger, pino({ level: 'silent' }), 60, (alert) => raiseAlert(test.database.db.pool, alert), {
      attemptCountMax: 2,
      parkSeconds: 0.05,
    });
    await sweeper.sweep();
    await sweeper.sweep();
    await sweeper.sweep();
    assert.deepEqual(attempts, ['failed', 'failed'], 'parked after two');
    await new Promise((resolve) => setTimeout(resolve, 80));
    poisoned = false;
    await sweeper.sweep();
    await sweeper.sweep();
    assert.deepEqual(attempts, ['failed', 'failed', 'ok'], 'tried once more after the pause, and not again once settled');
  });
});
