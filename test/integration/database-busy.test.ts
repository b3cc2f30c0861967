import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { Database, lockTimeoutRetryCountMax } from '../../src/db/database.js';
import { DatabaseBusyError } from '../../src/db/errors.js';
import { appKey, createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import type { TestDatabase } from '../helpers/database.js';
import { uniqueId } from '../helpers/stripe-events.js';

// A database that answers but takes too long: a statement past statement_timeout (57014) or a
// lock wait past lock_timeout (55P03), provoked on real PostgreSQL by another connection that
// holds the row lock. Both answer 503 database_busy with Retry-After and write nothing; a lock
// timeout is retried once first, a statement timeout never; the same call succeeds once the
// lock is gone.
let test: TestApp;
const opened: { close(): Promise<void> }[] = [];

before(async () => {
  test = await createTestApp();
});
after(async () => {
  for (const item of opened.reverse()) await item.close();
  await test.close();
});

/** The test's database seen through a pool with tight timeouts (0: no lock timeout of its own). */
function tightDatabase(timeouts: { statementTimeoutMilliseconds: number; lockTimeoutMilliseconds: number }): TestDatabase {
  const db = new Database({ url: test.database.url, poolSize: 4, applicationName: 'tally-test-tight', warn: () => undefined, ...timeouts });
  const database = { url: test.database.url, db, close: () => db.close() };
  opened.push(database);
  return database;
}

/** Another connection that holds `lockSql` in an open transaction until release(). */
async function holdLock(lockSql: string, values: unknown[] = []): Promise<{ release(): Promise<void> }> {
  const holder = new pg.Client({ connectionString: test.database.url, application_name: 'lock-holder' });
  await holder.connect();
  await holder.query('begin');
  await holder.query(lockSql, values);
  let released = false;
  const release = async () => {
    if (released) return;
    released = true;
    await holder.query('commit');
    await holder.end();
  };
  opened.push({ close: release });
  return { release };
}

const holdAccount = (accountId: string) => holdLock('select 1 from accounts where id = $1 for update', [accountId]);

/** A Tally on the same data whose pool has the given timeouts. */
async function tallyWith(timeouts: { statementTimeoutMilliseconds: number; lockTimeoutMilliseconds: number }): Promise<TestApp> {
  const busy = await createTestApp({ database: tightDatabase(timeouts) });
  opened.push(busy);
  return busy;
}

/** A call with the app key, answered with its headers. */
const post = (app: TestApp, url: string, body: unknown) =>
  app.app.inject({
    method: 'POST',
    url,
    headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
    payload: JSON.stringify(body),
  });

describe('a statement or lock wait that takes too long', () => {
  it('answers 503 database_busy with Retry-After for a statement timeout (57014), writes nothing, and succeeds later', async () => {
    const busy = await tallyWith({ statementTimeoutMilliseconds: 1000, lockTimeoutMilliseconds: 0 });
    const accountId = uniqueId('busy');
    await fundedAccount(test, accountId, 100);
    const spend = { amount: 30, idempotency_key: uniqueId('spend') };
    const lock = await holdAccount(accountId);
    const refused = await post(busy, `/v1/accounts/${accountId}/usage`, spend);
    await lock.release();
    assert.equal(refused.statusCode, 503, refused.body);
    assert.equal(refused.json().error.code, 'database_busy');
    assert.equal(refused.headers['retry-after'], '5');
    assert.equal((await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available, 100, 'nothing was spent');
    const again = await busy.call('POST', `/v1/accounts/${accountId}/usage`, spend);
    assert.equal(again.status, 200, 'the same key spends once the lock is gone');
    assert.equal(again.body.available, 70);
  });

  it('answers 503 database_busy with Retry-After for a lock timeout (55P03) after its retry', async () => {
    const busy = await tallyWith({ statementTimeoutMilliseconds: 30_000, lockTimeoutMilliseconds: 200 });
    const accountId = uniqueId('busy');
    await fundedAccount(test, accountId, 100);
    const lock = await holdAccount(accountId);
    const refused = await post(busy, `/v1/accounts/${accountId}/holds`, { amount: 10, idempotency_key: uniqueId('hold') });
    await lock.release();
    assert.equal(refused.statusCode, 503, refused.body);
    assert.equal(refused.json().error.code, 'database_busy');
    assert.equal(refused.headers['retry-after'], '5');
    assert.doesNotMatch(refused.body, /55P03|lock timeout|accounts/, 'the database words stay in the log');
    const balance = (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;
    assert.deepEqual([balance.available, balance.held], [100, 0], 'nothing was held');
  });

  it('answers 503 database_busy for a read on the pool itself, past the error path of Database', async () => {
    // Proves the renderer's own mapping: trial eligibility reads trial_claims on the pool
    // directly, and a lock timeout there is database_busy too, not 500 internal_error.
    const busy = await tallyWith({ statementTimeoutMilliseconds: 30_000, lockTimeoutMilliseconds: 200 });
    const accountId = uniqueId('busy');
    await fundedAccount(test, accountId, 0);
    const lock = await holdLock('lock table trial_claims in access exclusive mode');
    const refused = await busy.call('GET', `/v1/accounts/${accountId}/trial-eligibility`);
    await lock.release();
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.equal(refused.body.error.code, 'database_busy');
    assert.equal((await busy.call('GET', `/v1/accounts/${accountId}/trial-eligibility`)).body.eligible, true);
  });

  it('describes database_busy in the OpenAPI description of every call that uses the database', async () => {
    const document = (await test.call('GET', '/openapi.json', undefined, null)).body;
    assert.match(document.paths['/v1/accounts/{id}/usage'].post.responses['503'].description, /database_busy: /);
    assert.ok(document.components.schemas.DatabaseBusyError, 'its error schema');
  });
});

describe('retries in Database', () => {
  it('tries a transaction again once after a lock timeout, then throws database_busy', async () => {
    const { db } = tightDatabase({ statementTimeoutMilliseconds: 30_000, lockTimeoutMilliseconds: 150 });
    const accountId = uniqueId('busy');
    await fundedAccount(test, accountId, 0);
    const lock = await holdAccount(accountId);
    let attempts = 0;
    const error = await db
      .withTransaction(async (client) => {
        attempts += 1;
        await client.query('select 1 from accounts where id = $1 for update', [accountId]);
      })
      .then(
        () => assert.fail('the lock was held throughout'),
        (caught: unknown) => caught,
      );
    await lock.release();
    assert.equal(attempts, 1 + lockTimeoutRetryCountMax, 'bounded: one retry');
    assert.ok(error instanceof DatabaseBusyError);
    assert.equal((error.cause as { code?: string }).code, '55P03');
  });

  it('succeeds on the retry when the lock is released meanwhile', async () => {
    const { db } = tightDatabase({ statementTimeoutMilliseconds: 30_000, lockTimeoutMilliseconds: 150 });
    const accountId = uniqueId('busy');
    await fundedAccount(test, accountId, 0);
    const lock = await holdAccount(accountId);
    let attempts = 0;
    await db.withTransaction(async (client) => {
      attempts += 1;
      if (attempts === 2) await lock.release();
      await client.query('select 1 from accounts where id = $1 for update', [accountId]);
    });
    assert.equal(attempts, 2);
  });

  it('never tries a statement again after a statement timeout', async () => {
    const { db } = tightDatabase({ statementTimeoutMilliseconds: 200, lockTimeoutMilliseconds: 0 });
    let attempts = 0;
    const error = await db
      .withTransaction(async (client) => {
        attempts += 1;
        await client.query('select pg_sleep(5)');
      })
      .then(
        () => assert.fail('pg_sleep(5) outlasts 200 ms'),
        (caught: unknown) => caught,
      );
    assert.equal(attempts, 1);
    assert.ok(error instanceof DatabaseBusyError);
    assert.equal((error.cause as { code?: string }).code, '57014');
    // The same through a single statement.
    const single = await db.query('select pg_sleep(5)').then(
      () => assert.fail('pg_sleep(5) outlasts 200 ms'),
      (caught: unknown) => caught,
    );
    assert.ok(single instanceof DatabaseBusyError);
  });
});
