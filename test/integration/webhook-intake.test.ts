import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { intakeBatchesConcurrentMax, storeEvents } from '../../src/webhooks/inbox.js';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { event, signedHeader } from '../helpers/stripe-events.js';

// Webhook intake with group commit: deliveries that arrive while earlier ones are being stored
// share one statement (one transaction, one WAL flush), and each is answered only once its row
// is committed. A table lock held by the test stands for a slow commit: it keeps the first
// batches waiting in the database while the next deliveries queue up behind them.
let test: TestApp;

before(async () => {
  test = await createTestApp();
});
after(() => test.close());

type Delivery = { payload: string; answered: boolean; response: Promise<{ status: number; body: any }> };

function send(payload: string): Delivery {
  const delivery: Delivery = { payload, answered: false, response: Promise.resolve({ status: 0, body: undefined }) };
  delivery.response = test.app
    .inject({
      method: 'POST',
      url: '/webhooks/stripe',
      headers: { 'content-type': 'application/json', 'stripe-signature': signedHeader(payload) },
      payload,
    })
    .then((response) => {
      delivery.answered = true;
      return { status: response.statusCode, body: response.json() };
    });
  return delivery;
}

const typeOnly = (id?: string) =>
  JSON.stringify(
    event('customer.subscription.trial_will_end', { id: 'sub_intake', object: 'subscription' }, id === undefined ? {} : { id }),
  );

async function waitFor(condition: () => boolean | Promise<boolean>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/**
 * Holds inserts into the inbox back until `release()`: the first deliveries (one batch each,
 * as many as may be in flight) wait in the database, and `queued` more queue up in the intake.
 */
async function holdInserts(): Promise<{ blocked: Delivery[]; release(): Promise<void>; client: pg.Client }> {
  const client = new pg.Client({ connectionString: test.database.url });
  await client.connect();
  await client.query('begin');
  await client.query('lock table webhook_events in share mode');
  const blocked = Array.from({ length: intakeBatchesConcurrentMax }, () => send(typeOnly()));
  await waitFor(
    async () =>
      (
        await client.query<{ count: number }>(
          `select count(*)::int as count from pg_locks where relation = 'webhook_events'::regclass and not granted`,
        )
      ).rows[0]?.count === intakeBatchesConcurrentMax,
    'the first batches to wait for the lock',
  );
  return {
    blocked,
    client,
    async release() {
      await client.query('commit');
      await client.end();
    },
  };
}

const storedIds = async (ids: string[]) =>
  (
    await test.database.db.query<{ id: string; xmin: string }>('select id, xmin::text as xmin from webhook_events where id = any($1)', [
      ids,
    ])
  ).rows;

describe('webhook intake with group commit', () => {
  it('stores events that arrive together in one transaction and answers each only after the commit', async () => {
    const hold = await holdInserts();
    const together = Array.from({ length: 10 }, () => send(typeOnly()));
    await waitFor(() => test.parts.intake.queuedCount === together.length, 'the deliveries to queue');
    await sleep(50);
    assert.ok(
      [...hold.blocked, ...together].every((delivery) => !delivery.answered),
      'nothing is answered before its row is committed',
    );
    await hold.release();
    const responses = await Promise.all(together.map((delivery) => delivery.response));
    assert.ok(responses.every((response) => response.status === 200 && response.body.duplicate === false));
    for (const delivery of hold.blocked) assert.equal((await delivery.response).status, 200);
    const rows = await storedIds(together.map((delivery) => JSON.parse(delivery.payload).id as string));
    assert.equal(rows.length, together.length, 'every event is stored');
    assert.equal(new Set(rows.map((row) => row.xmin)).size, 1, 'all in one transaction');
  });

  it('stores a duplicate in the same group once and answers both deliveries 200', async () => {
    const earlier = typeOnly();
    assert.equal((await send(earlier).response).status, 200);
    const hold = await holdInserts();
    const twice = typeOnly();
    const together = [send(twice), send(typeOnly()), send(twice), send(earlier)];
    await waitFor(() => test.parts.intake.queuedCount === together.length, 'the deliveries to queue');
    await hold.release();
    const responses = await Promise.all(together.map((delivery) => delivery.response));
    assert.deepEqual(
      responses.map((response) => [response.status, response.body.duplicate]),
      [
        [200, false],
        [200, false],
        [200, true],
        [200, true],
      ],
    );
    const rows = await storedIds([JSON.parse(twice).id, JSON.parse(earlier).id]);
    assert.equal(rows.length, 2, 'each id stored once');
  });

  it('does not fail the good members of a group when one cannot be stored', async () => {
    // A creation time past PostgreSQL's last timestamp: this member fails the group's statement,
    // and only it answers with an error.
    const bad = JSON.stringify({ ...JSON.parse(typeOnly()), created: 9_999_999_999_999 });
    const hold = await holdInserts();
    const good = [send(typeOnly()), send(typeOnly())];
    const badDelivery = send(bad);
    const more = send(typeOnly());
    await waitFor(() => test.parts.intake.queuedCount === 4, 'the deliveries to queue');
    await hold.release();
    const goodResponses = await Promise.all([...good, more].map((delivery) => delivery.response));
    assert.ok(goodResponses.every((response) => response.status === 200 && response.body.duplicate === false));
    assert.equal((await badDelivery.response).status, 500);
    const rows = await storedIds([...good, more, badDelivery].map((delivery) => JSON.parse(delivery.payload).id as string));
    assert.equal(rows.length, 3, 'the good members are stored, the bad one is not');
  });

  it('refuses a bad signature in a busy moment before anything is written', async () => {
    const hold = await holdInserts();
    const good = send(typeOnly());
    const forged = typeOnly();
    const refused = test.app.inject({
      method: 'POST',
      url: '/webhooks/stripe',
      headers: { 'content-type': 'application/json', 'stripe-signature': signedHeader(forged, { secret: 'whsec_wrong_secret' }) },
      payload: forged,
    });
    assert.equal((await refused).statusCode, 400, 'answered at once, without waiting for a batch');
    await waitFor(() => test.parts.intake.queuedCount === 1, 'the good delivery to queue');
    await hold.release();
    assert.equal((await good.response).status, 200);
    assert.equal((await storedIds([JSON.parse(forged).id])).length, 0);
  });
});

describe('storeEvents', () => {
  it('answers one outcome per event, in order, and writes rows whatever the order of their ids', async () => {
    const make = () => {
      const payload = typeOnly();
      return { event: JSON.parse(payload), rawBody: Buffer.from(payload) };
    };
    const [a, b, c] = [make(), make(), make()];
    const outcomes = await storeEvents(test.database.db, [c, a, c, b]);
    assert.deepEqual(outcomes, ['stored', 'stored', 'duplicate', 'stored']);
    assert.deepEqual(await storeEvents(test.database.db, [b, a]), ['duplicate', 'duplicate']);
    const rows = await test.database.db.query<{ raw_body: string; type: string; created: Date }>(
      'select raw_body, type, created from webhook_events where id = $1',
      [a.event.id],
    );
    assert.equal(rows.rows[0]?.raw_body, a.rawBody.toString());
    assert.equal(rows.rows[0]?.type, 'customer.subscription.trial_will_end');
    assert.equal(rows.rows[0]?.created.getTime(), a.event.created * 1000);
  });
});
