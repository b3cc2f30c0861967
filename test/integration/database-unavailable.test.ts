import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, it } from 'node:test';
import pg from 'pg';
import { adminKey, appKey, createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { deliver, event, subscription, uniqueId } from '../helpers/stripe-events.js';

// The database stops taking connections (as when it is restarting or out of connection slots):
// every call answers 503 database_unavailable with Retry-After, /readyz says why, nothing is
// written, and the same calls succeed once the database is back.
let test: TestApp;
let server: pg.Client;
let databaseName: string;

before(async () => {
  test = await createTestApp();
  databaseName = decodeURIComponent(new URL(test.database.url).pathname.slice(1));
  server = new pg.Client({ connectionString: process.env.TALLY_TEST_SERVER_URL });
  await server.connect();
});
after(async () => {
  await server.query(`alter database ${pg.escapeIdentifier(databaseName)} allow_connections true`);
  await server.end();
  await test.close();
});

async function refuseConnections(): Promise<void> {
  await server.query(`alter database ${pg.escapeIdentifier(databaseName)} allow_connections false`);
  await server.query('select pg_terminate_backend(pid) from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()', [
    databaseName,
  ]);
  // The pool learns that its idle connections were closed from their error events.
  await sleep(300);
}

const inject = (method: 'GET' | 'POST', url: string, key: string | null, body?: unknown) =>
  test.app.inject({
    method,
    url,
    headers: {
      ...(key === null ? {} : { authorization: `Bearer ${key}` }),
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    payload: body === undefined ? undefined : JSON.stringify(body),
  });

it('answers 503 database_unavailable while the database refuses connections, writes nothing, and recovers', async () => {
  const accountId = uniqueId('acct');
  await fundedAccount(test, accountId, 100);
  const stripeEvent = event(
    'customer.subscription.updated',
    subscription({ id: uniqueId('sub'), customer: uniqueId('cus'), status: 'active', price: 'price_plus_monthly', start: 1, end: 2 }),
  );
  const usage = { amount: 30, idempotency_key: uniqueId('use') };

  await refuseConnections();
  try {
    const balance = await inject('GET', `/v1/accounts/${accountId}/balance`, appKey);
    assert.equal(balance.statusCode, 503);
    assert.equal(balance.json().error.code, 'database_unavailable');
    assert.equal(balance.headers['retry-after'], '5');

    const spend = await inject('POST', `/v1/accounts/${accountId}/usage`, appKey, usage);
    assert.equal(spend.statusCode, 503);
    assert.equal(spend.json().error.code, 'database_unavailable');

    const grant = await inject('POST', `/v1/accounts/${accountId}/grants`, adminKey, {
      amount: 5,
      source: 'promo',
      reason: 'while down',
      idempotency_key: uniqueId('g'),
    });
    assert.equal(grant.statusCode, 503);

    // Stripe redelivers a webhook that was not acknowledged with 2xx.
    const webhook = await deliver(test, stripeEvent);
    assert.equal(webhook.status, 503);
    assert.equal(webhook.body.error.code, 'database_unavailable');

    const ready = await inject('GET', '/readyz', null);
    assert.equal(ready.statusCode, 503);
    // A status only: the database's own error text (host, user, database names) stays in the log.
    assert.deepEqual(ready.json(), { status: 'unavailable', reason: 'database' });
  } finally {
    await server.query(`alter database ${pg.escapeIdentifier(databaseName)} allow_connections true`);
  }

  assert.equal((await inject('GET', '/readyz', null)).statusCode, 200);
  const { rows } = await test.database.db.query<{ id: string }>('select id from webhook_events where id = $1', [stripeEvent.id]);
  assert.deepEqual(rows, [], 'the refused webhook was not stored');
  const balance = await inject('GET', `/v1/accounts/${accountId}/balance`, appKey);
  assert.equal(balance.statusCode, 200);
  assert.equal(balance.json().available, 100, 'nothing was spent or granted while the database was away');

  const spend = await inject('POST', `/v1/accounts/${accountId}/usage`, appKey, usage);
  assert.equal(spend.statusCode, 200);
  assert.equal((await deliver(test, stripeEvent)).status, 200);
  assert.equal((await inject('GET', `/v1/accounts/${accountId}/balance`, appKey)).json().available, 70);
});
