import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { Database } from '../../src/db/database.js';
import { Metrics } from '../../src/ops/metrics.js';

// A collection on demand, without starting node with --expose-gc.
setFlagsFromString('--expose-gc');
const collectGarbage = runInNewContext('gc') as () => void;

const fakeDatabase = (): Database =>
  ({
    pool: { totalCount: 3, idleCount: 2, waitingCount: 0 },
    query: async () => ({ rows: [] }),
  }) as unknown as Database;

test('every Metrics serves the process metrics beside its own', async () => {
  for (const metrics of [new Metrics(fakeDatabase()), new Metrics(fakeDatabase())]) {
    const text = await metrics.registry.metrics();
    assert.match(text, /^tally_process_process_cpu_user_seconds_total /m);
    assert.match(text, /^tally_db_pool_connections\{state="total"\} 3$/m);
    assert.match(text, /^tally_stripe_breaker_open 0$/m);
  }
});

test('a Metrics no longer used is freed with its database (a process may build many Tallies)', async () => {
  let database: Database | undefined = fakeDatabase();
  const freed = new WeakRef(database);
  new Metrics(database);
  database = undefined;
  for (let attempt = 0; attempt < 10 && freed.deref() !== undefined; attempt += 1) {
    await new Promise((resolve) => setImmediate(resolve));
    collectGarbage();
  }
  assert.equal(freed.deref(), undefined, 'the database of a dropped Metrics is still reachable');
});
