import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import { Ledger, type Outcome } from '../../src/ledger/ledger.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

// Proves that the set-based batch applier answers every event exactly as tally_usage, applied
// one at a time, would: same statuses, bodies, refusals, replays and conflicts, and the same
// balances and grants afterwards, for random events and random cuts into batches. (A batch
// takes its events by account, so the one-at-a-time side applies each batch in that order.)
let database: TestDatabase;
let ledger: Ledger;
let run = 0;

before(async () => {
  database = await createTestDatabase();
  ledger = new Ledger(database.db, { adjustmentCreditsMax: 100_000 });
});
after(async () => {
  await database.close();
});

interface Event {
  account: 'a' | 'b' | 'c' | 'ghost';
  amount: number;
  key: number;
}

const eventArbitrary = fc.record({
  account: fc.constantFrom('a' as const, 'b' as const, 'c' as const, 'ghost' as const),
  amount: fc.integer({ min: 1, max: 60 }),
  key: fc.integer({ min: 0, max: 15 }),
});

async function setUp(prefix: string): Promise<void> {
  for (const [name, grants] of [['a', [70, 40]], ['b', [50]], ['c', []]] as const) {
    await ledger.upsertAccount(`${prefix}${name}`, {});
    for (const [index, amount] of grants.entries()) {
      await ledger.grant(`${prefix}${name}`, { amount, source: 'promo', reason: 'setup', idempotency_key: `${prefix}${name}-grant-${index}`, priority: index });
    }
  }
}

/** An outcome with this run's names taken out and entry ids dropped, for comparison. */
const normalize = (outcome: Outcome, prefix: string): unknown =>
  JSON.parse(JSON.stringify(outcome).split(prefix).join('').replace(/"entry_id":"entry_\d+",?/, ''));

it('answers batches exactly as one spend at a time would', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(eventArbitrary, { minLength: 1, maxLength: 40 }), fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 40, maxLength: 40 }), async (events, cuts) => {
      run += 1;
      const single = `s${run}-`;
      const batched = `b${run}-`;
      await setUp(single);
      await setUp(batched);
      const toInput = (event: Event, prefix: string) => ({ account_id: `${prefix}${event.account}`, amount: event.amount, idempotency_key: `${prefix}k${event.key}` });
      let start = 0;
      for (const size of cuts) {
        const chunk = events.slice(start, start + size);
        start += size;
        if (chunk.length === 0) break;
        const batchOutcomes = await ledger.usageBatch(chunk.map((event) => toInput(event, batched)), 'app');
        const order = chunk.map((event, index) => ({ event, index })).sort((x, y) => (x.event.account < y.event.account ? -1 : x.event.account > y.event.account ? 1 : x.index - y.index));
        const singleOutcomes: Outcome[] = new Array(chunk.length);
        for (const { event, index } of order) {
          const input = toInput(event, single);
          singleOutcomes[index] = await ledger.usage(input.account_id, { amount: input.amount, idempotency_key: input.idempotency_key }, 'app');
        }
        assert.deepEqual(batchOutcomes.map((outcome) => normalize(outcome, batched)), singleOutcomes.map((outcome) => normalize(outcome, single)));
      }
      for (const name of ['a', 'b', 'c']) {
        assert.deepEqual(await ledger.balance(`${batched}${name}`), { ...(await ledger.balance(`${single}${name}`)), account_id: `${batched}${name}` });
        const remaining = async (prefix: string) =>
          (await database.db.query<{ remaining: number }>('select remaining from grants where account_id = $1 order by id', [`${prefix}${name}`])).rows.map((row) => row.remaining);
        assert.deepEqual(await remaining(batched), await remaining(single));
        const folded = await database.db.query<{ ok: boolean }>(
          `select a.available - a.debt = coalesce((select sum(amount) from entries e where e.account_id = a.id), 0) as ok from accounts a where id = $1`,
          [`${batched}${name}`],
        );
        assert.equal(folded.rows[0]?.ok, true, 'the batch path keeps balance equal to the fold of entries');
      }
    }),
    { numRuns: Number(process.env.FC_RUNS ?? 60), seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED), endOnFailure: true },
  );
});
