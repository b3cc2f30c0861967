import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import { Ledger, type Outcome } from '../../src/ledger/ledger.js';
import { TestClock } from '../helpers/app.js';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';
import { LedgerModel } from '../helpers/ledger-model.js';

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

// Proves that batches agree with the reference model (one per account) through histories that
// also grant expiring credits, hold, capture, void, let holds and grants expire, move time and
// settle: after every step each account's statuses, balance and grants match the model. This
// is where the batch once read an account it had not settled (500 instead of 402).
type Name = 'a' | 'b' | 'c';
type Step =
  | { kind: 'grant'; account: Name; key: number; amount: number; priority: number; expiresIn: number | null }
  | { kind: 'hold'; account: Name; key: number; amount: number; lifetime: number }
  | { kind: 'capture'; account: Name; key: number; amount: number }
  | { kind: 'void'; account: Name; key: number }
  | { kind: 'tick'; seconds: number }
  | { kind: 'settle'; account: Name }
  | { kind: 'batch'; events: { account: Name; key: number; amount: number }[] };

const name = fc.constantFrom('a' as const, 'b' as const, 'c' as const);
const smallKey = fc.integer({ min: 0, max: 8 });
const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ kind: fc.constant('grant' as const), account: name, key: smallKey, amount: fc.integer({ min: 1, max: 100 }), priority: fc.integer({ min: 0, max: 2 }), expiresIn: fc.option(fc.integer({ min: 1, max: 300 }), { nil: null }) }),
  fc.record({ kind: fc.constant('hold' as const), account: name, key: smallKey, amount: fc.integer({ min: 1, max: 60 }), lifetime: fc.integer({ min: 1, max: 300 }) }),
  fc.record({ kind: fc.constant('capture' as const), account: name, key: smallKey, amount: fc.integer({ min: 0, max: 60 }) }),
  fc.record({ kind: fc.constant('void' as const), account: name, key: smallKey }),
  fc.record({ kind: fc.constant('tick' as const), seconds: fc.integer({ min: 1, max: 150 }) }),
  fc.record({ kind: fc.constant('settle' as const), account: name }),
  fc.record({ kind: fc.constant('batch' as const), events: fc.array(fc.record({ account: name, key: smallKey, amount: fc.integer({ min: 1, max: 50 }) }), { minLength: 1, maxLength: 12 }) }),
);

interface World {
  ledger: Ledger;
  clock: TestClock;
  prefix: string;
  models: Record<Name, LedgerModel>;
}

async function applyBatch(world: World, events: { account: Name; key: number; amount: number }[]): Promise<void> {
  const outcomes = await world.ledger.usageBatch(events.map((event) => ({ account_id: `${world.prefix}${event.account}`, amount: event.amount, idempotency_key: `${world.prefix}${event.account}-u${event.key}` })), 'app');
  // The batch takes each account's events in the order given; accounts are independent.
  events.forEach((event, index) => {
    assert.equal(outcomes[index]?.status, world.models[event.account].usage(`u${event.key}`, event.amount), `event ${index} of the batch`);
  });
}

async function resolveHold(world: World, step: Extract<Step, { kind: 'capture' | 'void' }>): Promise<void> {
  const model = world.models[step.account];
  if (!model.hasHold(`h${step.key}`)) return;
  const account = `${world.prefix}${step.account}`;
  const { rows } = await database.db.query<{ id: number }>('select id from holds where account_id = $1 and idempotency_key = $2', [account, `${account}-h${step.key}`]);
  const holdId = `hold_${rows[0]?.id}`;
  const expected = model.resolve(`h${step.key}`, step.kind === 'capture' ? step.amount : undefined);
  const attempt = step.kind === 'capture' ? world.ledger.capture(holdId, step.amount, 'app') : world.ledger.void(holdId, 'app');
  if (expected.status === 200) {
    await attempt;
    return;
  }
  await assert.rejects(attempt, (error: { status?: number }) => error.status === expected.status);
}

async function applyWorldStep(world: World, step: Step): Promise<void> {
  if (step.kind === 'batch') return applyBatch(world, step.events);
  if (step.kind === 'capture' || step.kind === 'void') return resolveHold(world, step);
  if (step.kind === 'tick') {
    world.clock.advanceSeconds(step.seconds);
    for (const model of Object.values(world.models)) model.now = world.clock.now().getTime();
    return;
  }
  const account = `${world.prefix}${step.account}`;
  const model = world.models[step.account];
  if (step.kind === 'settle') {
    await database.db.query('select tally_settle_account($1, $2)', [account, world.clock.now()]);
    model.settle();
    return;
  }
  if (step.kind === 'grant') {
    const expiresAt = step.expiresIn === null ? undefined : new Date(world.clock.now().getTime() + step.expiresIn * 1000).toISOString();
    const outcome = await world.ledger.grant(account, { amount: step.amount, source: 'promo', reason: 'model', idempotency_key: `${account}-g${step.key}`, priority: step.priority, expires_at: expiresAt });
    assert.equal(outcome.status, model.grant(`g${step.key}`, step.amount, step.priority, step.expiresIn));
    return;
  }
  const outcome = await world.ledger.hold(account, { amount: step.amount, idempotency_key: `${account}-h${step.key}`, expires_in_seconds: step.lifetime }, 'app');
  assert.equal(outcome.status, model.hold(`h${step.key}`, step.amount, step.lifetime));
}

async function assertWorldAgrees(world: World): Promise<void> {
  for (const [name, model] of Object.entries(world.models)) {
    const account = `${world.prefix}${name}`;
    const balance = await world.ledger.balance(account);
    assert.deepEqual({ available: balance.available, held: balance.held }, { available: model.available(), held: model.held }, account);
    const grants = await database.db.query<{ remaining: number }>(
      'select case when expires_at <= $2 then 0 else remaining end as remaining from grants where account_id = $1 order by id',
      [account, world.clock.now()],
    );
    assert.deepEqual(grants.rows.map((row) => row.remaining), model.effectiveRemaining(), account);
    const folded = await database.db.query<{ ok: boolean }>(
      `select a.available - a.debt = coalesce((select sum(amount) from entries e where e.account_id = a.id), 0)
         and a.available = coalesce((select sum(remaining) from grants g where g.account_id = a.id), 0) as ok
       from accounts a where id = $1`,
      [account],
    );
    assert.equal(folded.rows[0]?.ok, true, `${account}: the balance is the fold of its entries and of its grants`);
  }
}

it('agrees with the reference model through batches, expiring grants, holds and settles', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(stepArbitrary, { minLength: 1, maxLength: 30 }), async (steps) => {
      run += 1;
      const clock = new TestClock();
      const start = clock.now().getTime();
      const world: World = {
        ledger: new Ledger(database.db, { clock: clock.now, adjustmentCreditsMax: 100_000 }),
        clock,
        prefix: `m${run}-`,
        models: { a: new LedgerModel(start), b: new LedgerModel(start), c: new LedgerModel(start) },
      };
      for (const name of ['a', 'b', 'c']) await world.ledger.upsertAccount(`${world.prefix}${name}`, {});
      for (const step of steps) {
        await applyWorldStep(world, step);
        await assertWorldAgrees(world);
      }
    }),
    { numRuns: Number(process.env.FC_RUNS ?? 100), seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED), path: process.env.FC_PATH, endOnFailure: true },
  );
});
