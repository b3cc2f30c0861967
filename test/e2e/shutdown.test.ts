import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { shutdownSecondsMax } from '../../src/main.js';
import { freePort } from '../../src/db/embedded.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { uniqueId } from '../helpers/stripe-events.js';
import { portAnswers, startTallyProcess, waitUntil, type StartedTally } from '../helpers/tally-process.js';

// Proves the shutdown deadline: on SIGTERM Tally closes intake, drains requests and stops its
// workers, and when that takes longer than shutdownSecondsMax (here a request stuck behind a
// row lock that another connection holds) it exits anyway, exit 1, with a log line that says
// so. A shutdown with nothing stuck ends at once, exit 0.
let database: TestDatabase;
const dataDirectory = mkdtempSync(join(tmpdir(), 'tally-shutdown-'));
const appKey = 'shutdown-test-app-key-0123';

before(async () => {
  database = await createTestDatabase(5);
});
after(async () => {
  await database.close();
  rmSync(dataDirectory, { recursive: true, force: true });
});

async function startTally(port: number): Promise<StartedTally> {
  return startTallyProcess(
    process.execPath,
    ['bin/tally.js', 'start'],
    {
      DATABASE_URL: database.url,
      TALLY_DATA_DIR: dataDirectory,
      PORT: String(port),
      TALLY_API_KEY: appKey,
      TALLY_ADMIN_KEY: 'shutdown-test-admin-key-0123',
      // Only the deadline may end the stuck request, not the statement timeout.
      TALLY_DB_STATEMENT_TIMEOUT_MS: '600000',
    },
    { ready: (output) => output.includes('listening on') },
  );
}

/** The exit code; a process still running after `milliseconds` is killed and the test fails. */
async function exitedWithin(started: StartedTally, milliseconds: number): Promise<number | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<'late'>((resolve) => {
    timer = setTimeout(() => resolve('late'), milliseconds);
  });
  const outcome = await Promise.race([started.exited, late]);
  clearTimeout(timer);
  if (outcome === 'late') {
    started.child.kill('SIGKILL');
    assert.fail(`tally was still running ${milliseconds} ms after SIGTERM:\n${started.output()}`);
  }
  return outcome;
}

describe('shutting down', () => {
  it('exits after shutdownSecondsMax, saying so, when a request is stuck behind a lock', async () => {
    const accountId = uniqueId('stuck');
    await database.db.query('insert into accounts (id) values ($1)', [accountId]);
    const port = await freePort();
    const started = await startTally(port);
    const holder = new pg.Client({ connectionString: database.url, application_name: 'lock-holder' });
    await holder.connect();
    try {
      await holder.query('begin');
      await holder.query('select 1 from accounts where id = $1 for update', [accountId]);
      const stuck = fetch(`http://127.0.0.1:${port}/v1/accounts/${accountId}/usage`, {
        method: 'POST',
        headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ amount: 1, idempotency_key: 'stuck-1' }),
      }).then(
        (response) => `answered ${response.status}`,
        () => 'cut off',
      );
      await waitUntil('the request waits for the row lock', async () => {
        const { rows } = await database.db.query(
          `select 1 from pg_stat_activity where datname = current_database() and application_name = 'tally' and wait_event_type = 'Lock'`,
        );
        return rows.length > 0;
      });
      const signalledAt = Date.now();
      process.kill(started.child.pid ?? 0, 'SIGTERM');
      const code = await exitedWithin(started, (shutdownSecondsMax + 10) * 1000);
      const elapsedMilliseconds = Date.now() - signalledAt;
      assert.equal(code, 1, started.output());
      assert.ok(
        elapsedMilliseconds >= shutdownSecondsMax * 1000 - 200 && elapsedMilliseconds < shutdownSecondsMax * 1000 + 5000,
        `exited ${elapsedMilliseconds} ms after SIGTERM`,
      );
      assert.match(started.output(), new RegExp(`shutdown did not finish within ${shutdownSecondsMax} s; exiting anyway`));
      assert.equal(await stuck, 'cut off');
      assert.equal(await portAnswers(port), false, 'nothing listens any more');
    } finally {
      await holder.query('rollback');
      await holder.end();
    }
  });

  it('exits 0 at once when nothing is stuck', async () => {
    const port = await freePort();
    const started = await startTally(port);
    const signalledAt = Date.now();
    process.kill(started.child.pid ?? 0, 'SIGTERM');
    assert.equal(await exitedWithin(started, (shutdownSecondsMax + 10) * 1000), 0, started.output());
    assert.ok(Date.now() - signalledAt < shutdownSecondsMax * 1000, 'well within the deadline');
    assert.doesNotMatch(started.output(), /exiting anyway/);
  });
});
