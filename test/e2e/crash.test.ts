import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { freePort } from '../../src/db/embedded.js';
import { webhookSecret } from '../helpers/app.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { checkoutSession, event, signedHeader, uniqueId } from '../helpers/stripe-events.js';

// Proves invariant 12: a 2xx for a webhook means it is stored. The process is killed with
// SIGKILL in the middle of a burst of 200 webhooks, started again, and sent all 200 again:
// every effect happens exactly once.
let database: TestDatabase;
const dataDirectory = mkdtempSync(join(tmpdir(), 'tally-crash-'));

before(async () => {
  database = await createTestDatabase(5);
});
after(async () => {
  await database.close();
  rmSync(dataDirectory, { recursive: true, force: true });
});

async function startTally(port: number): Promise<ChildProcess> {
  const child = spawn(process.execPath, ['bin/tally.js', 'start'], {
    env: {
      PATH: process.env.PATH,
      DATABASE_URL: database.url,
      TALLY_DATA_DIR: dataDirectory,
      PORT: String(port),
      STRIPE_WEBHOOK_SECRET: webhookSecret,
      TALLY_API_KEY: 'crash-test-app-key-0123',
      TALLY_ADMIN_KEY: 'crash-test-admin-key-0123',
      LOG_LEVEL: 'warn',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk) => (output += chunk));
  child.stderr?.on('data', (chunk) => (output += chunk));
  const deadline = Date.now() + 30_000;
  while (!output.includes('listening on')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`tally did not start: ${output}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return child;
}

async function post(port: number, payload: string): Promise<number> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/webhooks/stripe`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signedHeader(payload) },
      body: payload,
    });
    await response.arrayBuffer();
    return response.status;
  } catch {
    return 0; // the process died under this request: no answer, so no promise was made
  }
}

it('loses no acknowledged webhook and applies none twice across a SIGKILL', async () => {
  const accounts = Array.from({ length: 200 }, () => uniqueId('crash'));
  await database.db.query(`insert into accounts (id) select unnest($1::text[])`, [accounts]);
  const payloads = accounts.map((accountId) =>
    JSON.stringify(
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent: uniqueId('pi'), packId: 'pack_1000' }),
      ),
    ),
  );
  const port = await freePort();
  const victim = await startTally(port);
  // Listened for from the start: the process may be gone before the burst's last request ends.
  const victimExited = new Promise((resolve) => victim.once('exit', resolve));
  const acknowledged: number[] = [];
  let killed = false;
  await Promise.all(
    Array.from({ length: 10 }, async (_, lane) => {
      for (let index = lane; index < payloads.length; index += 10) {
        if (acknowledged.length >= 60 && !killed) {
          killed = true;
          victim.kill('SIGKILL');
        }
        if ((await post(port, payloads[index] ?? '')) === 200) acknowledged.push(index);
      }
    }),
  );
  await victimExited;
  assert.ok(acknowledged.length >= 60 && acknowledged.length < 200, `killed mid-burst after ${acknowledged.length} acknowledgements`);
  const stored = await database.db.query<{ id: string }>('select id from webhook_events');
  const storedIds = new Set(stored.rows.map((row) => row.id));
  for (const index of acknowledged) assert.ok(storedIds.has(JSON.parse(payloads[index] ?? '{}').id), 'an acknowledged event is stored');

  const survivor = await startTally(port);
  try {
    const statuses = await Promise.all(payloads.map((payload) => post(port, payload)));
    assert.ok(
      statuses.every((status) => status === 200),
      'every redelivery is acknowledged',
    );
    const deadline = Date.now() + 60_000;
    for (;;) {
      const pending = await database.db.query<{ count: number }>(
        `select count(*)::int as count from webhook_events where status = 'pending'`,
      );
      if (pending.rows[0]?.count === 0) break;
      assert.ok(Date.now() < deadline, 'the worker applies every stored event');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
    const grants = await database.db.query<{ account_id: string; count: number; credits: number }>(
      `select a.id as account_id, count(g.id)::int as count, coalesce(sum(g.amount), 0)::int as credits
       from accounts a left join grants g on g.account_id = a.id and g.source = 'purchase'
       where a.id = any($1) group by a.id`,
      [accounts],
    );
    assert.equal(grants.rows.length, 200);
    assert.ok(
      grants.rows.every((row) => row.count === 1 && row.credits === 1000),
      'every purchase granted exactly once',
    );
    const events = await database.db.query<{ count: number }>(
      `select count(*)::int as count from webhook_events where status = 'processed'`,
    );
    assert.equal(events.rows[0]?.count, 200);
  } finally {
    survivor.kill('SIGTERM');
    await new Promise((resolve) => survivor.once('exit', resolve));
  }
});
