import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { migrate, readMigrations } from '../../src/db/migrate.js';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { createEmptyDatabase } from '../helpers/database.js';
import { checkoutSession, deliver, event, settleWebhooks, uniqueId } from '../helpers/stripe-events.js';

// The tally command run as a process against a test database: each command, its output, its
// errors on stderr and its exit codes (0 done, 2 usage, 3 not found, 4 findings).
let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

function tally(...args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return tallyWith({ DATABASE_URL: test.database.url }, ...args);
}

function tallyWith(
  environment: Record<string, string>,
  ...args: string[]
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['bin/tally.js', ...args], {
      env: { PATH: process.env.PATH, LOG_LEVEL: 'silent', ...environment },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('tally command', () => {
  it('answers --help for every command', async () => {
    for (const command of ['start', 'migrate', 'balance', 'grant', 'reconcile', 'replay', 'export']) {
      const result = await tally(command, '--help');
      assert.equal(result.code, 0, command);
      assert.match(result.stdout, new RegExp(`Usage: tally ${command}`));
    }
  });

  it('migrates, grants with a reason, and prints the balance', async () => {
    assert.match((await tally('migrate')).stdout, /up to date/);
    await test.call('PUT', '/v1/accounts/cli-1', {});
    const granted = await tally('grant', 'cli-1', '250', '--reason', 'support ticket 4', '--key', 'cli-grant-1');
    assert.equal(granted.code, 0, granted.stderr);
    assert.equal(JSON.parse(granted.stdout).amount, 250);
    const again = await tally('grant', 'cli-1', '250', '--reason', 'support ticket 4', '--key', 'cli-grant-1');
    assert.equal(again.code, 0, 'the same key grants once');
    const balance = await tally('balance', 'cli-1');
    assert.equal(balance.code, 0);
    assert.deepEqual(JSON.parse(balance.stdout), { account_id: 'cli-1', available: 250, held: 0, debt: 0 });
    const entry = await test.database.db.query<{ actor: string; reason: string }>(
      `select actor, reason from entries where account_id = 'cli-1'`,
    );
    assert.deepEqual(entry.rows, [{ actor: 'admin', reason: 'support ticket 4' }]);
  });

  it('reports errors on stderr with meaningful exit codes', async () => {
    const missingAccount = await tally('balance', 'no-such-account');
    assert.equal(missingAccount.code, 3);
    assert.match(missingAccount.stderr, /account_not_found/);
    const badAmount = await tally('grant', 'cli-1', '12.5', '--reason', 'x', '--key', 'cli-bad-amount');
    assert.equal(badAmount.code, 2);
    assert.match(badAmount.stderr, /positive whole number/);
    const noReason = await tally('grant', 'cli-1', '5', '--key', 'cli-no-reason');
    assert.equal(noReason.code, 2);
    assert.match(noReason.stderr, /--reason/);
    const unknown = await tally('launch');
    assert.equal(unknown.code, 2);
    const missingEvent = await tally('replay', 'evt_not_stored');
    assert.equal(missingEvent.code, 3);
    assert.match(missingEvent.stderr, /event_not_found/);
    const noExport = await tally('export', 'no-such-account');
    assert.equal(noExport.code, 3);
  });

  it('refuses a grant without --key: a retried grant must not grant twice', async () => {
    // Proves that the operator names the grant: without a key each run would be a new grant.
    const keyless = await tally('grant', 'cli-1', '5', '--reason', 'goodwill');
    assert.equal(keyless.code, 2);
    assert.match(keyless.stderr, /--key/);
    const balance = await tally('balance', 'cli-1');
    assert.equal(JSON.parse(balance.stdout).available, 250, 'nothing was granted');
  });

  it('never creates a database for a command run where there is no data', async () => {
    // Proves that `tally balance` (and the other commands that read or change existing data)
    // in a folder without data refuses, naming TALLY_DATA_DIR and DATABASE_URL, and leaves
    // the folder as it was instead of starting a new empty database there.
    const empty = mkdtempSync(join(tmpdir(), 'tally-cli-empty-'));
    try {
      for (const args of [
        ['balance', 'someone'],
        ['export', 'someone'],
        ['reconcile'],
        ['replay', 'evt_1'],
        ['grant', 'someone', '5', '--reason', 'x', '--key', 'k'],
      ]) {
        const result = await tallyWith({ TALLY_DATA_DIR: empty }, ...args);
        assert.equal(result.code, 2, `${args[0]}: ${result.stderr}`);
        assert.match(result.stderr, /TALLY_DATA_DIR/, args[0]);
        assert.match(result.stderr, /DATABASE_URL/, args[0]);
        assert.equal(result.stderr.trim().split('\n').length, 1, `${args[0]}: one line`);
      }
      assert.deepEqual(readdirSync(empty), [], 'nothing was created');
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });

  it('never migrates: against a database never migrated, or older than this Tally, it says so and changes nothing', async () => {
    // Proves that only `start` and `migrate` migrate: the commands that read or change data
    // refuse (exit 2, one line naming `tally migrate`) and leave the schema as it was.
    const url = await createEmptyDatabase();
    const database = new pg.Client({ connectionString: url });
    await database.connect();
    try {
      const commands = [
        ['balance', 'someone'],
        ['export', 'someone'],
        ['reconcile'],
        ['replay', 'evt_1'],
        ['grant', 'someone', '5', '--reason', 'x', '--key', 'k'],
      ];
      for (const args of commands) {
        const result = await tallyWith({ DATABASE_URL: url }, ...args);
        assert.equal(result.code, 2, `${args[0]}: ${result.stderr}`);
        assert.match(result.stderr, /never migrated.*tally migrate/, args[0]);
        assert.equal(result.stderr.trim().split('\n').length, 1, `${args[0]}: one line`);
      }
      const created = await database.query(`select to_regclass('tally_migrations') as table`);
      assert.equal(created.rows[0]?.table, null, 'nothing was migrated');

      const latest = readMigrations().length;
      await migrate(url, () => undefined, { versionMax: latest - 2 });
      for (const args of [commands[0] ?? [], commands[2] ?? []]) {
        const result = await tallyWith({ DATABASE_URL: url }, ...args);
        assert.equal(result.code, 2, `${args[0]}: ${result.stderr}`);
        assert.match(
          result.stderr,
          /older than this Tally: 2 migration\(s\) not applied \(00\d\d-[a-z-]+, 00\d\d-[a-z-]+\).*tally migrate/,
        );
      }
      const versions = await database.query<{ version: number }>('select max(version)::int as version from tally_migrations');
      assert.equal(versions.rows[0]?.version, latest - 2, 'still at the older version');

      assert.equal((await tallyWith({ DATABASE_URL: url }, 'migrate')).code, 0);
      const afterMigrate = await tallyWith({ DATABASE_URL: url }, 'balance', 'someone');
      assert.equal(afterMigrate.code, 3, afterMigrate.stderr);
      assert.match(afterMigrate.stderr, /account_not_found/);

      // Function files change without a migration: a database an older release migrated is named too.
      await database.query(`update tally_function_files set checksum = 'older' where name = (select min(name) from tally_function_files)`);
      const staleFunctions = await tallyWith({ DATABASE_URL: url }, 'balance', 'someone');
      assert.equal(staleFunctions.code, 2, staleFunctions.stderr);
      assert.match(
        staleFunctions.stderr,
        /functions are older than this Tally: 1 function file\(s\) not applied \(\d\d-[a-z-]+\.sql\).*tally migrate/,
      );
      assert.equal((await tallyWith({ DATABASE_URL: url }, 'migrate')).code, 0);
      assert.equal((await tallyWith({ DATABASE_URL: url }, 'balance', 'someone')).code, 3);
    } finally {
      await database.end();
    }
  });

  it('reconcile shows its progress on stderr when stderr is not a terminal', async () => {
    // Proves the promise of `tally reconcile --help`: progress on stderr, the report on stdout.
    const result = await tally('reconcile');
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /reconciling: 1\/\d+ balance_equals_entries done/);
    assert.match(result.stderr, /reconciling: (\d+)\/\1 /, 'the last step is reported');
    assert.doesNotMatch(result.stdout, /reconciling:/);
  });

  it('replays a stored event with its effects still exactly once', async () => {
    await test.call('PUT', '/v1/accounts/cli-2', {});
    const purchase = event(
      'checkout.session.completed',
      checkoutSession({
        mode: 'payment',
        accountId: 'cli-2',
        customer: uniqueId('cus'),
        paymentIntent: uniqueId('pi'),
        packId: 'pack_1000',
      }),
    );
    await deliver(test, purchase);
    await settleWebhooks(test);
    const replayed = await tally('replay', String(purchase.id));
    assert.equal(replayed.code, 0, replayed.stderr);
    assert.deepEqual(JSON.parse(replayed.stdout), { event_id: purchase.id, outcome: 'processed' });
    assert.equal((await test.call('GET', '/v1/accounts/cli-2/balance')).body.available, 1000);
  });

  it('exports an account as JSON', async () => {
    const exported = await tally('export', 'cli-2');
    assert.equal(exported.code, 0);
    const body = JSON.parse(exported.stdout);
    assert.equal(body.account.id, 'cli-2');
    assert.equal(body.grants.length, 1);
  });

  it('reconciles: exit 0 when healthy, 4 with the findings listed when not', async () => {
    const healthy = await tally('reconcile');
    assert.equal(healthy.code, 0, healthy.stdout + healthy.stderr);
    assert.match(healthy.stdout, /0 finding\(s\)/);
    await test.database.db.query(`update accounts set available = available + 1 where id = 'cli-1'`);
    const broken = await tally('reconcile');
    assert.equal(broken.code, 4, broken.stdout + broken.stderr);
    assert.match(broken.stdout, /balance_equals_entries\s+cli-1/);
    const json = await tally('reconcile', '--json');
    assert.equal(JSON.parse(json.stdout).finding_count >= 1, true);
    await test.database.db.query(`update accounts set available = available - 1 where id = 'cli-1'`);
  });
});
