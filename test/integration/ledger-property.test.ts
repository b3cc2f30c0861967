import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import { Ledger } from '../../src/ledger/ledger.js';
import { TestClock } from '../helpers/app.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { LedgerModel } from '../helpers/ledger-model.js';

// Proves: after every step of a random history (grants with expiries and priorities, spends,
// holds, captures, voids, replayed keys, time moving, sweeps) the database's balance, every
// grant's remaining, and the ledger agree with the reference model. A failure prints its seed
// and path; replay it with FC_SEED=<seed> FC_PATH=<path> npm test -- ledger-property.

type Step =
  | { kind: 'grant'; key: number; amount: number; priority: number; expiresIn: number | null }
  | { kind: 'usage'; key: number; amount: number }
  | { kind: 'hold'; key: number; amount: number; lifetime: number }
  | { kind: 'capture'; key: number; amount: number }
  | { kind: 'void'; key: number }
  | { kind: 'tick'; seconds: number }
  | { kind: 'sweep' };

// Keys come from a small pool so that replays and conflicts happen often.
const key = fc.integer({ min: 0, max: 12 });
const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('grant' as const),
    key,
    amount: fc.integer({ min: 1, max: 100 }),
    priority: fc.integer({ min: 0, max: 2 }),
    expiresIn: fc.option(fc.integer({ min: 1, max: 400 }), { nil: null }),
  }),
  fc.record({ kind: fc.constant('usage' as const), key, amount: fc.integer({ min: 1, max: 80 }) }),
  fc.record({
    kind: fc.constant('hold' as const),
    key,
    amount: fc.integer({ min: 1, max: 80 }),
    lifetime: fc.integer({ min: 1, max: 300 }),
  }),
  fc.record({ kind: fc.constant('capture' as const), key, amount: fc.integer({ min: 0, max: 90 }) }),
  fc.record({ kind: fc.constant('void' as const), key }),
  fc.record({ kind: fc.constant('tick' as const), seconds: fc.integer({ min: 1, max: 200 }) }),
  fc.constant({ kind: 'sweep' as const }),
);

let database: TestDatabase;
let run = 0;
before(async () => {
  database = await createTestDatabase();
});
after(async () => {
  await database.close();
});

async function applyStep(ledger: Ledger, model: LedgerModel, clock: TestClock, account: string, step: Step): Promise<void> {
  const prefix = `${account}-`;
  switch (step.kind) {
    case 'grant': {
      const expiresAt = step.expiresIn === null ? undefined : new Date(clock.now().getTime() + step.expiresIn * 1000).toISOString();
      const outcome = await ledger.grant(account, {
        amount: step.amount,
        source: 'promo',
        reason: 'model',
        idempotency_key: `${prefix}g${step.key}`,
        priority: step.priority,
        expires_at: expiresAt,
      });
      assert.equal(outcome.status, model.grant(`g${step.key}`, step.amount, step.priority, step.expiresIn));
      return;
    }
    case 'usage': {
      const outcome = await ledger.usage(account, { amount: step.amount, idempotency_key: `${prefix}u${step.key}` }, 'app');
      assert.equal(outcome.status, model.usage(`u${step.key}`, step.amount));
      return;
    }
    case 'hold': {
      const outcome = await ledger.hold(
        account,
        { amount: step.amount, idempotency_key: `${prefix}h${step.key}`, expires_in_seconds: step.lifetime },
        'app',
      );
      assert.equal(outcome.status, model.hold(`h${step.key}`, step.amount, step.lifetime));
      return;
    }
    case 'capture':
    case 'void': {
      if (!model.hasHold(`h${step.key}`)) return;
      const holdId = await holdIdFor(account, `${prefix}h${step.key}`);
      const expected = model.resolve(`h${step.key}`, step.kind === 'capture' ? step.amount : undefined);
      const attempt = step.kind === 'capture' ? ledger.capture(holdId, step.amount, 'app') : ledger.void(holdId, 'app');
      if (expected.status === 200) {
        await attempt;
        return;
      }
      await assert.rejects(attempt, (error: { status?: number; details?: { status?: string } }) => {
        assert.equal(error.status, expected.status);
        if (expected.holdStatus !== undefined) assert.equal(error.details?.status, expected.holdStatus);
        return true;
      });
      return;
    }
    case 'tick':
      clock.advanceSeconds(step.seconds);
      model.now = clock.now().getTime();
      return;
    case 'sweep':
      await database.db.query('select tally_settle_account($1, $2)', [account, clock.now()]);
      model.settle();
      return;
  }
}

async function holdIdFor(account: string, key: string): Promise<string> {
  const { rows } = await database.db.query<{ id: number }>('select id from holds where account_id = $1 and idempotency_key = $2', [
    account,
    key,
  ]);
  return `hold_${rows[0]?.id}`;
}

async function assertAgrees(ledger: Ledger, model: LedgerModel, clock: TestClock, account: string): Promise<void> {
  const balance = await ledger.balance(account);
  assert.deepEqual(
    { available: balance.available, held: balance.held, debt: balance.debt },
    { available: model.available(), held: model.held, debt: 0 },
  );
  const grants = await database.db.query<{ remaining: number }>(
    `select case when expires_at <= $2 then 0 else remaining end as remaining from grants where account_id = $1 order by id`,
    [account, clock.now()],
  );
  assert.deepEqual(
    grants.rows.map((row) => row.remaining),
    model.effectiveRemaining(),
  );
  const folded = await database.db.query<{ available: number; entry_sum: number; grant_sum: number; held_sum: number; held: number }>(
    `select a.available, a.held,
       (select coalesce(sum(amount), 0) from entries e where e.account_id = a.id)::bigint as entry_sum,
       (select coalesce(sum(remaining), 0) from grants g where g.account_id = a.id)::bigint as grant_sum,
       (select coalesce(sum(amount), 0) from holds h where h.account_id = a.id and status = 'pending')::bigint as held_sum
     from accounts a where a.id = $1`,
    [account],
  );
  const row = folded.rows[0];
  assert.ok(row);
  assert.equal(row.entry_sum, row.available, 'the balance is the fold of the entries');
  assert.equal(row.grant_sum, row.available, 'the balance is the sum of the grants remaining');
  assert.equal(row.held_sum, row.held, 'held is the sum of pending holds');
}

it('agrees with the reference model after every step of random histories', async () => {
  const seed = process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED);
  await fc.assert(
    fc.asyncProperty(fc.array(stepArbitrary, { minLength: 1, maxLength: 30 }), async (steps) => {
      run += 1;
      const account = `model-${run}`;
      const clock = new TestClock();
      const ledger = new Ledger(database.db, { clock: clock.now, adjustmentCreditsMax: 100_000 });
      const model = new LedgerModel(clock.now().getTime());
      await ledger.upsertAccount(account, {});
      for (const step of steps) {
        await applyStep(ledger, model, clock, account, step);
        await assertAgrees(ledger, model, clock, account);
      }
    }),
    { numRuns: Number(process.env.FC_RUNS ?? 200), seed, path: process.env.FC_PATH, endOnFailure: true },
  );
});
