import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, it } from 'node:test';
import fc from 'fast-check';
import { Ledger, type Outcome } from '../../src/ledger/ledger.js';
import { TestClock, createTestApp } from '../helpers/app.js';
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
  for (const [name, grants] of [
    ['a', [70, 40]],
    ['b', [50]],
    ['c', []],
  ] as const) {
    await ledger.upsertAccount(`${prefix}${name}`, {});
    for (const [index, amount] of grants.entries()) {
      await ledger.grant(`${prefix}${name}`, {
        amount,
        source: 'promo',
        reason: 'setup',
        idempotency_key: `${prefix}${name}-grant-${index}`,
        priority: index,
      });
    }
  }
}

/** An outcome with this run's names taken out and entry ids dropped, for comparison. */
const normalize = (outcome: Outcome, prefix: string): unknown =>
  JSON.parse(
    JSON.stringify(outcome)
      .split(prefix)
      .join('')
      .replace(/"entry_id":"entry_\d+",?/, ''),
  );

it('answers batches exactly as one spend at a time would', async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(eventArbitrary, { minLength: 1, maxLength: 40 }),
      fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 40, maxLength: 40 }),
      async (events, cuts) => {
        run += 1;
        const single = `s${run}-`;
        const batched = `b${run}-`;
        await setUp(single);
        await setUp(batched);
        const toInput = (event: Event, prefix: string) => ({
          account_id: `${prefix}${event.account}`,
          amount: event.amount,
          idempotency_key: `${prefix}k${event.key}`,
        });
        let start = 0;
        for (const size of cuts) {
          const chunk = events.slice(start, start + size);
          start += size;
          if (chunk.length === 0) break;
          const batchOutcomes = await ledger.usageBatch(
            chunk.map((event) => toInput(event, batched)),
            'app',
          );
          const order = chunk
            .map((event, index) => ({ event, index }))
            .sort((x, y) => (x.event.account < y.event.account ? -1 : x.event.account > y.event.account ? 1 : x.index - y.index));
          const singleOutcomes: Outcome[] = new Array(chunk.length);
          for (const { event, index } of order) {
            const input = toInput(event, single);
            singleOutcomes[index] = await ledger.usage(
              input.account_id,
              { amount: input.amount, idempotency_key: input.idempotency_key },
              'app',
            );
          }
          assert.deepEqual(
            batchOutcomes.map((outcome) => normalize(outcome, batched)),
            singleOutcomes.map((outcome) => normalize(outcome, single)),
          );
        }
        for (const name of ['a', 'b', 'c']) {
          assert.deepEqual(await ledger.balance(`${batched}${name}`), {
            ...(await ledger.balance(`${single}${name}`)),
            account_id: `${batched}${name}`,
          });
          const remaining = async (prefix: string) =>
            (
              await database.db.query<{ remaining: number }>('select remaining from grants where account_id = $1 order by id', [
                `${prefix}${name}`,
              ])
            ).rows.map((row) => row.remaining);
          assert.deepEqual(await remaining(batched), await remaining(single));
          const folded = await database.db.query<{ ok: boolean }>(
            `select a.available - a.debt = coalesce((select sum(amount) from entries e where e.account_id = a.id), 0) as ok from accounts a where id = $1`,
            [`${batched}${name}`],
          );
          assert.equal(folded.rows[0]?.ok, true, 'the batch path keeps balance equal to the fold of entries');
        }
      },
    ),
    {
      numRuns: Number(process.env.FC_RUNS ?? 60),
      seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED),
      endOnFailure: true,
    },
  );
});

// Proves that batches answer exactly as single spends, and agree with the reference model (one
// per account), through histories that also grant expiring credits, hold, capture, void, let
// holds and grants expire, move time, settle, and void a hold while a batch waits for the
// account's lock. Every step runs on two copies of three accounts: on one the usage goes
// through batches, on the other one spend at a time (each batch's events taken account by
// account, as the batch takes them). After every step the answers (bodies included), balances,
// grants and spend entries of the two copies are equal and agree with the model. Keys are
// shared by the three accounts and by every operation: the same key on another account is
// another request, and on the same account another operation under it is a conflict.
//
// Account c has spend limits (per UTC day and per UTC month, set before its first spend): the
// batch decides it the set-based way while the batch stays below both limits, and hands it to the
// per-event path when the batch would reach or pass one, so both ways meet the limits here; the
// history starts half an hour before a month ends, so that windows roll over in most runs, and
// after every step what c spent in each window agrees with the model.
//
// The race is the path where a release commits between a batch's snapshot and its lock: the
// void holds the account's lock (on the earlier clock, so its credits go back to a grant) while
// the batch, on a later clock by which that grant has expired, starts and waits; the batch must
// then settle the account and answer 402 where a single spend would, never 500.
type Name = 'a' | 'b' | 'c';
type BatchEvent = { account: Name; key: number; amount: number };
type Step =
  | { kind: 'grant'; account: Name; key: number; amount: number; priority: number; expiresIn: number | null }
  | { kind: 'hold'; account: Name; key: number | string; amount: number; lifetime: number }
  | { kind: 'capture'; account: Name; key: number; amount: number }
  | { kind: 'void'; account: Name; key: number }
  | { kind: 'tick'; seconds: number }
  | { kind: 'settle'; account: Name }
  | { kind: 'batch'; events: BatchEvent[] }
  | { kind: 'raced'; account: Name; seconds: number; events: BatchEvent[] }
  | { kind: 'replay'; picks: number[] };

const name = fc.constantFrom('a' as const, 'b' as const, 'c' as const);
// Holds take keys 0 to 8 and spends 0 to 24 (so a spend sometimes reuses a hold's key, and
// often has a key of its own); grants have keys of their own, so that they keep coming.
const holdKey = fc.integer({ min: 0, max: 8 });
const batchEvents = fc.array(fc.record({ account: name, key: fc.integer({ min: 0, max: 24 }), amount: fc.integer({ min: 1, max: 50 }) }), {
  minLength: 1,
  maxLength: 12,
});
const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    kind: fc.constant('grant' as const),
    account: name,
    key: fc.integer({ min: 0, max: 12 }),
    amount: fc.integer({ min: 1, max: 100 }),
    priority: fc.integer({ min: 0, max: 2 }),
    expiresIn: fc.option(fc.integer({ min: 1, max: 300 }), { nil: null }),
  }),
  fc.record({
    kind: fc.constant('hold' as const),
    account: name,
    key: holdKey,
    amount: fc.integer({ min: 1, max: 60 }),
    lifetime: fc.integer({ min: 1, max: 300 }),
  }),
  fc.record({ kind: fc.constant('capture' as const), account: name, key: holdKey, amount: fc.integer({ min: 0, max: 60 }) }),
  fc.record({ kind: fc.constant('void' as const), account: name, key: holdKey }),
  fc.record({ kind: fc.constant('tick' as const), seconds: fc.integer({ min: 1, max: 150 }) }),
  fc.record({ kind: fc.constant('settle' as const), account: name }),
  { arbitrary: fc.record({ kind: fc.constant('batch' as const), events: batchEvents }), weight: 3 },
  fc.record({ kind: fc.constant('raced' as const), account: name, seconds: fc.integer({ min: 1, max: 300 }), events: batchEvents }),
  fc.record({ kind: fc.constant('replay' as const), picks: fc.array(fc.nat(), { minLength: 1, maxLength: 4 }) }),
);

interface World {
  ledger: Ledger;
  clock: TestClock;
  /** The copy whose usage goes through batches, and the copy that spends one at a time. */
  batched: string;
  single: string;
  models: Record<Name, LedgerModel>;
  /** Races so far, each with a hold key of its own. */
  raceCount: number;
  /** Every spend sent so far, for replays. */
  sent: BatchEvent[];
}

const names: Name[] = ['a', 'b', 'c'];
/** Account c's spend limits: tight enough that spends and holds meet them in most histories. */
const cLimits = { day: 90, month: 150 };
const keyOf = (prefix: string, key: number | string) => `${prefix}k${key}`;

/** An outcome with the copy's prefix taken out and ids (which differ between copies) blanked. */
const blank = (outcome: unknown, prefix: string): unknown =>
  JSON.parse(
    JSON.stringify(outcome)
      .split(prefix)
      .join('')
      .replace(/"(entry|hold|grant)_\d+"/g, '"$1"'),
  );

function assertSameOutcomes(world: World, batched: unknown, single: unknown, what: string): void {
  assert.deepEqual(blank(batched, world.batched), blank(single, world.single), `${what}: the batched copy answers as the single one`);
}

/** Spends of a batch one at a time, each account's events in order, accounts in the batch's order. */
async function spendOneByOne(world: World, events: BatchEvent[]): Promise<Outcome[]> {
  const outcomes: Outcome[] = new Array(events.length);
  const order = events
    .map((event, index) => ({ event, index }))
    .sort((x, y) => (x.event.account < y.event.account ? -1 : x.event.account > y.event.account ? 1 : x.index - y.index));
  for (const { event, index } of order) {
    outcomes[index] = await world.ledger.usage(
      `${world.single}${event.account}`,
      { amount: event.amount, idempotency_key: keyOf(world.single, event.key) },
      'app',
    );
  }
  return outcomes;
}

function batchInputs(world: World, events: BatchEvent[]) {
  return events.map((event) => ({
    account_id: `${world.batched}${event.account}`,
    amount: event.amount,
    idempotency_key: keyOf(world.batched, event.key),
  }));
}

function assertModelSpends(world: World, events: BatchEvent[], outcomes: Outcome[]): void {
  // The batch takes each account's events in the order given; accounts are independent.
  events.forEach((event, index) => {
    assert.equal(outcomes[index]?.status, world.models[event.account].usage(`k${event.key}`, event.amount), `event ${index} of the batch`);
  });
}

async function applyBatch(world: World, events: BatchEvent[]): Promise<void> {
  world.sent.push(...events);
  const batched = await world.ledger.usageBatch(batchInputs(world, events), 'app');
  const single = await spendOneByOne(world, events);
  assertSameOutcomes(world, batched, single, 'batch');
  assertModelSpends(world, events, batched);
}

async function holdId(account: string, key: string): Promise<number | undefined> {
  const { rows } = await database.db.query<{ id: number }>('select id from holds where account_id = $1 and idempotency_key = $2', [
    account,
    key,
  ]);
  return rows[0]?.id;
}

/** Waits until some connection to this database waits on a lock (the batch, queued behind the void). */
async function untilSomeoneWaitsOnALock(): Promise<void> {
  for (let attempt = 0; attempt < 500; attempt += 1) {
    const { rows } = await database.db.query<{ waiting: number }>(
      `select count(*)::int as waiting from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'`,
    );
    if ((rows[0]?.waiting ?? 0) > 0) return;
    await sleep(10);
  }
  throw new Error('the batch never waited for the lock');
}

/**
 * Holds everything the account has (so that its grants, those expiring soon included, are
 * emptied), then voids that hold: the void holds the account's lock on this clock while the
 * batch starts `seconds` later and waits for it.
 */
async function applyRaced(world: World, step: Extract<Step, { kind: 'raced' }>): Promise<void> {
  const events: BatchEvent[] = [{ ...step.events[0]!, account: step.account }, ...step.events.slice(1)];
  const model = world.models[step.account];
  world.raceCount += 1;
  const key = `r${world.raceCount}`;
  const amount = model.available();
  // A hold the limits would refuse leaves nothing to void: the race needs one that is made.
  if (amount === 0 || !model.limitAllows(amount)) {
    applyTick(world, step.seconds);
    return applyBatch(world, events);
  }
  await applyWorldStep(world, { kind: 'hold', account: step.account, key, amount, lifetime: 3600 });
  const batchedHold = await holdId(`${world.batched}${step.account}`, keyOf(world.batched, key));
  const singleHold = await holdId(`${world.single}${step.account}`, keyOf(world.single, key));
  const voidedAt = world.clock.now();
  assert.equal(model.resolve(`k${key}`, undefined).status, 200);
  await world.ledger.void(`hold_${singleHold}`, 'app');
  let batch: Promise<Outcome[]> | undefined;
  await database.db.withTransaction(async (client) => {
    await client.query('select tally_void($1, $2, $3)', [batchedHold, 'app', voidedAt]);
    applyTick(world, step.seconds);
    batch = world.ledger.usageBatch(batchInputs(world, events), 'app');
    batch.catch(() => undefined);
    await untilSomeoneWaitsOnALock();
  });
  assert.ok(batch !== undefined);
  const outcomes = await batch;
  world.sent.push(...events);
  const single = await spendOneByOne(world, events);
  assertSameOutcomes(world, outcomes, single, 'raced batch');
  assertModelSpends(world, events, outcomes);
}

function applyTick(world: World, seconds: number): void {
  world.clock.advanceSeconds(seconds);
  for (const model of Object.values(world.models)) model.now = world.clock.now().getTime();
}

async function resolveHold(world: World, step: Extract<Step, { kind: 'capture' | 'void' }>): Promise<void> {
  const model = world.models[step.account];
  if (!model.hasHold(`k${step.key}`)) return;
  const expected = model.resolve(`k${step.key}`, step.kind === 'capture' ? step.amount : undefined);
  const answers: unknown[] = [];
  for (const prefix of [world.batched, world.single]) {
    const id = await holdId(`${prefix}${step.account}`, keyOf(prefix, step.key));
    const attempt =
      step.kind === 'capture' ? world.ledger.capture(`hold_${id}`, step.amount, 'app') : world.ledger.void(`hold_${id}`, 'app');
    if (expected.status === 200) {
      answers.push(await attempt);
    } else {
      await assert.rejects(attempt, (error: { status?: number }) => error.status === expected.status);
    }
  }
  if (answers.length === 2) assert.deepEqual(answers[0], answers[1], `${step.kind}: both copies answer the same`);
}

async function applyWorldStep(world: World, step: Step): Promise<void> {
  if (step.kind === 'batch') return applyBatch(world, step.events);
  if (step.kind === 'raced') return applyRaced(world, step);
  if (step.kind === 'replay') {
    // Spends sent before, sent again as they were: a batch whose accounts may have only keys
    // they have seen, which settles nothing, as single replays settle nothing.
    if (world.sent.length === 0) return;
    return applyBatch(
      world,
      step.picks.map((pick) => world.sent[pick % world.sent.length]!),
    );
  }
  if (step.kind === 'capture' || step.kind === 'void') return resolveHold(world, step);
  if (step.kind === 'tick') return applyTick(world, step.seconds);
  const model = world.models[step.account];
  if (step.kind === 'settle') {
    for (const prefix of [world.batched, world.single])
      await database.db.query('select tally_settle_account($1, $2)', [`${prefix}${step.account}`, world.clock.now()]);
    model.settle();
    return;
  }
  const outcomes: Outcome[] = [];
  for (const prefix of [world.batched, world.single]) {
    const account = `${prefix}${step.account}`;
    const key = keyOf(prefix, step.kind === 'grant' ? `g${step.key}` : step.key);
    if (step.kind === 'grant') {
      const expiresAt = step.expiresIn === null ? undefined : new Date(world.clock.now().getTime() + step.expiresIn * 1000).toISOString();
      outcomes.push(
        await world.ledger.grant(account, {
          amount: step.amount,
          source: 'promo',
          reason: 'model',
          idempotency_key: key,
          priority: step.priority,
          expires_at: expiresAt,
        }),
      );
    } else {
      outcomes.push(
        await world.ledger.hold(account, { amount: step.amount, idempotency_key: key, expires_in_seconds: step.lifetime }, 'app'),
      );
    }
  }
  assertSameOutcomes(world, outcomes[0], outcomes[1], step.kind);
  const expected =
    step.kind === 'grant'
      ? model.grant(`kg${step.key}`, step.amount, step.priority, step.expiresIn)
      : model.hold(`k${step.key}`, step.amount, step.lifetime);
  assert.equal(outcomes[0]?.status, expected, step.kind);
}

/** The account's spend entries: amount, balance after, the grants they took from (by position) and how much. */
async function spendEntries(account: string, prefix: string): Promise<unknown[]> {
  const { rows } = await database.db.query<{ entry: unknown }>(
    `select jsonb_build_object('key', e.idempotency_key, 'amount', e.amount, 'balance_after', e.balance_after,
       'grants', (select jsonb_agg(g.position order by u.n) from unnest(e.grant_ids) with ordinality as u(id, n)
                  join (select id, row_number() over (order by id) as position from grants where account_id = $1) g on g.id = u.id),
       'credits', e.grant_credits, 'hash', e.payload_hash is not null) as entry
     from entries e where e.account_id = $1 and e.kind in ('usage', 'hold') order by e.id`,
    [account],
  );
  return rows.map((row) => blank(row.entry, prefix));
}

/** Each account of a copy: available and held as the balance call answers, grants' remaining as they count now, and whether it folds. */
async function copyState(
  world: World,
  prefix: string,
): Promise<Record<string, { available: number; held: number; remaining: number[]; folds: boolean }>> {
  const { rows } = await database.db.query<{ name: string; available: number; held: number; remaining: number[]; folds: boolean }>(
    `select substr(a.id, length($1) + 1) as name,
       a.available - coalesce((select sum(g.remaining) from grants g where g.account_id = a.id and g.live and g.expires_at <= $2), 0)::bigint as available,
       a.held,
       coalesce((select array_agg(case when g.expires_at <= $2 then 0 else g.remaining end order by g.id) from grants g where g.account_id = a.id), '{}') as remaining,
       a.available - a.debt = coalesce((select sum(amount) from entries e where e.account_id = a.id), 0)
         and a.available = coalesce((select sum(remaining) from grants g where g.account_id = a.id), 0)
         and a.held = coalesce((select sum(amount) from holds h where h.account_id = a.id and h.status = 'pending'), 0) as folds
     from accounts a where a.id = any($3) order by a.id`,
    [prefix, world.clock.now(), names.map((name) => `${prefix}${name}`)],
  );
  // int8[] comes back as strings; the credits here are small.
  return Object.fromEntries(rows.map(({ name, remaining, ...state }) => [name, { ...state, remaining: remaining.map(Number) }]));
}

async function assertWorldAgrees(world: World): Promise<void> {
  const expected = Object.fromEntries(
    names.map((name) => {
      const model = world.models[name];
      return [name, { available: model.available(), held: model.held, remaining: model.effectiveRemaining(), folds: true }];
    }),
  );
  assert.deepEqual(await copyState(world, world.batched), expected, 'the batched copy agrees with the model');
  assert.deepEqual(await copyState(world, world.single), expected, 'the single copy agrees with the model');
  for (const prefix of [world.batched, world.single]) {
    assert.deepEqual(
      (await world.ledger.spendLimits(`${prefix}c`)).spent,
      world.models.c.spentNow(),
      `${prefix}c: spent in each window agrees with the model`,
    );
  }
}

/** The events written about the account (balance.low, spend_limit.reached, ...), in order. */
async function accountEvents(account: string, prefix: string): Promise<unknown[]> {
  const { rows } = await database.db.query<{ event: unknown }>(
    `select jsonb_build_object('type', type, 'data', data) as event from events where account_id = $1 order by id`,
    [account],
  );
  return rows.map((row) => blank(row.event, prefix));
}

/**
 * Entries and events are append-only: comparing the spend entries and the events once, after the
 * history, covers every step.
 */
async function assertSameSpendEntries(world: World): Promise<void> {
  for (const name of names) {
    assert.deepEqual(
      await spendEntries(`${world.batched}${name}`, world.batched),
      await spendEntries(`${world.single}${name}`, world.single),
      `${name}: the same spend entries`,
    );
    assert.deepEqual(
      await accountEvents(`${world.batched}${name}`, world.batched),
      await accountEvents(`${world.single}${name}`, world.single),
      `${name}: the same events`,
    );
  }
}

it('answers as single spends and agrees with the reference model through batches, expiring grants, holds, settles and raced voids', async () => {
  await fc.assert(
    fc.asyncProperty(fc.array(stepArbitrary, { minLength: 1, maxLength: 30 }), async (steps) => {
      run += 1;
      const clock = new TestClock(Date.parse('2030-01-31T23:30:00.000Z'));
      const start = clock.now().getTime();
      const world: World = {
        ledger: new Ledger(database.db, { clock: clock.now, adjustmentCreditsMax: 100_000 }),
        clock,
        batched: `m${run}-`,
        single: `n${run}-`,
        models: { a: new LedgerModel(start), b: new LedgerModel(start), c: new LedgerModel(start, cLimits) },
        raceCount: 0,
        sent: [],
      };
      for (const prefix of [world.batched, world.single]) {
        for (const name of names) await world.ledger.upsertAccount(`${prefix}${name}`, {});
        await world.ledger.setSpendLimits(`${prefix}c`, { per_day: cLimits.day, per_month: cLimits.month }, 'app');
      }
      // Each account starts with grants whose spend order is not the order they were made in:
      // never-expiring at priority 1, then expiring at priority 0 (spent first), then an earlier expiry.
      for (const name of names) {
        for (const [index, seed] of [
          { amount: 60, priority: 1, expiresIn: null },
          { amount: 30, priority: 0, expiresIn: 240 },
          { amount: 20, priority: 0, expiresIn: 120 },
        ].entries()) {
          await applyWorldStep(world, { kind: 'grant', account: name, key: 100 + index, ...seed });
        }
      }
      for (const step of steps) {
        await applyWorldStep(world, step);
        await assertWorldAgrees(world);
      }
      await assertSameSpendEntries(world);
    }),
    {
      numRuns: Number(process.env.FC_RUNS ?? 100),
      seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED),
      path: process.env.FC_PATH,
      endOnFailure: true,
    },
  );
});

it('settles nothing for an account whose batch events are all replays, as single replays settle nothing', async () => {
  // A settle is not an answer, but it shows in the balance: a hold past its expiry counts as
  // held until something settles its account. A replay changes nothing, alone or in a batch.
  const clock = new TestClock();
  const timed = new Ledger(database.db, { clock: clock.now, adjustmentCreditsMax: 100_000 });
  const account = 'replay-settle';
  await timed.upsertAccount(account, {});
  await timed.grant(account, { amount: 50, source: 'promo', reason: 'r', idempotency_key: 'g', priority: 0 });
  const spent = await timed.usageBatch(
    [
      { account_id: account, amount: 5, idempotency_key: 'u1' },
      { account_id: account, amount: 5, idempotency_key: 'u2' },
    ],
    'app',
  );
  assert.deepEqual(
    spent.map((outcome) => outcome.status),
    [200, 200],
  );
  assert.equal((await timed.hold(account, { amount: 10, idempotency_key: 'h', expires_in_seconds: 60 }, 'app')).status, 201);
  clock.advanceSeconds(120);
  const before = await timed.balance(account);
  assert.deepEqual(before, { account_id: account, available: 30, held: 10, debt: 0 }, 'the expired hold still counts until a settle');
  const replayed = await timed.usageBatch(
    [
      { account_id: account, amount: 5, idempotency_key: 'u2' },
      { account_id: account, amount: 5, idempotency_key: 'u1' },
    ],
    'app',
  );
  assert.deepEqual(
    replayed.map((outcome) => [outcome.status, outcome.body.replayed]),
    [
      [200, true],
      [200, true],
    ],
  );
  assert.deepEqual(
    replayed.map((outcome) => outcome.body.available),
    spent.map((outcome) => outcome.body.available).reverse(),
  );
  assert.deepEqual(await timed.balance(account), before, 'the batch of replays settled nothing');
  const conflict = await timed.usageBatch([{ account_id: account, amount: 6, idempotency_key: 'u1' }], 'app');
  assert.equal(conflict[0]?.status, 409);
  assert.deepEqual(await timed.balance(account), before, 'nor did a conflict');
  const fresh = await timed.usageBatch(
    [
      { account_id: account, amount: 5, idempotency_key: 'u3' },
      { account_id: account, amount: 5, idempotency_key: 'u1' },
    ],
    'app',
  );
  assert.deepEqual(
    fresh.map((outcome) => outcome.status),
    [200, 200],
  );
  assert.deepEqual(
    await timed.balance(account),
    { account_id: account, available: 35, held: 0, debt: 0 },
    'a new key settles first: the hold is released, then 5 spent',
  );
});

it('answers the JSON form of the batch (processes started before 0013 call it) as the array form', async () => {
  for (const account of ['json-form', 'array-form']) {
    await ledger.upsertAccount(account, {});
    await ledger.grant(account, { amount: 20, source: 'promo', reason: 'r', idempotency_key: 'g', priority: 0 });
  }
  const events = (account: string) => [
    { account_id: account, amount: 15, idempotency_key: 'a', payload_hash: 'h15', reference: { description: 'x' }, actor: 'app' },
    { account_id: 'json-ghost', amount: 1, idempotency_key: 'b', payload_hash: 'h1', reference: {}, actor: 'app' },
    { account_id: account, amount: 15, idempotency_key: 'c', payload_hash: 'h15', reference: {}, actor: 'app' },
    { account_id: account, amount: 15, idempotency_key: 'a', payload_hash: 'h15', reference: { description: 'x' }, actor: 'app' },
  ];
  const json = await database.db.callJson<Outcome[]>('select tally_usage_batch($1::jsonb, null) as result', [
    JSON.stringify(events('json-form')),
  ]);
  const arrays = events('array-form');
  const array = await database.db.callJson<Outcome[]>(
    'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], null) as result',
    [
      arrays.map((event) => event.account_id),
      arrays.map((event) => event.amount),
      arrays.map((event) => event.idempotency_key),
      arrays.map((event) => event.payload_hash),
      arrays.map((event) => event.reference),
      arrays.map((event) => event.actor),
    ],
  );
  assert.deepEqual(
    json.map((outcome) => outcome.status),
    [200, 404, 402, 200],
  );
  const withoutIds = (outcomes: Outcome[], account: string) =>
    JSON.stringify(outcomes)
      .split(account)
      .join('')
      .replace(/"entry_\d+"/g, '"entry"');
  assert.equal(withoutIds(json, 'json-form'), withoutIds(array, 'array-form'));
  const references = await database.db.query<{ reference: unknown }>(
    `select reference from entries where account_id = 'json-form' and kind = 'usage'`,
  );
  assert.deepEqual(
    references.rows.map((row) => row.reference),
    [{ description: 'x' }],
  );
});

it('answers as single spends for an account with more live grants than the batch reads at once (the per-event path)', async () => {
  // 101 grants, each of 1 credit, spent in order: the batch hands this account to tally_usage.
  const accounts = { batched: 'many-grants-batched', single: 'many-grants-single' };
  for (const account of Object.values(accounts)) {
    await ledger.upsertAccount(account, {});
    await database.db.query(
      `select tally_add_grant($1, 'purchase', 1, n % 3, null, 'pack-' || n, 'grant', '{}', 'system', null, now()) from generate_series(1, 101) n`,
      [account],
    );
  }
  const amounts = [3, 40, 1, 57, 1];
  const batched = await ledger.usageBatch(
    amounts.map((amount, index) => ({ account_id: accounts.batched, amount, idempotency_key: `u${index}` })),
    'app',
  );
  const single: Outcome[] = [];
  for (const [index, amount] of amounts.entries())
    single.push(await ledger.usage(accounts.single, { amount, idempotency_key: `u${index}` }, 'app'));
  assert.deepEqual(
    batched.map((outcome) => outcome.status),
    [200, 200, 200, 200, 402],
  );
  const withoutIds = (outcomes: Outcome[]) => JSON.stringify(outcomes).replace(/"entry_\d+"/g, '"entry"');
  assert.equal(withoutIds(batched), withoutIds(single));
  const spends = async (account: string) =>
    (
      await database.db.query<{ credits: string[]; positions: string[] }>(
        `select e.grant_credits as credits, (select array_agg(g.position order by u.n) from unnest(e.grant_ids) with ordinality as u(id, n)
         join (select id, row_number() over (order by id) as position from grants where account_id = $1) g on g.id = u.id) as positions
       from entries e where e.account_id = $1 and e.kind = 'usage' order by e.id`,
        [account],
      )
    ).rows;
  assert.deepEqual(await spends(accounts.batched), await spends(accounts.single));
});

it('keeps keys and references exactly through the array form: quotes, backslashes, braces, commas, NULL', async () => {
  const account = 'array-escapes';
  await ledger.upsertAccount(account, {});
  await ledger.grant(account, { amount: 100, source: 'promo', reason: 'r', idempotency_key: 'g', priority: 0 });
  const keys = ['a"b', 'c\\d', 'NULL', '{x,y}', "it's"];
  const events = keys.map((key) => ({
    account_id: account,
    amount: 1,
    idempotency_key: key,
    description: `say "${key}" \\ {}`,
    metadata: { note: key },
  }));
  const outcomes = await ledger.usageBatch(events, 'app');
  assert.deepEqual(
    outcomes.map((outcome) => [outcome.status, outcome.body.replayed]),
    keys.map(() => [200, false]),
  );
  const { rows } = await database.db.query<{ idempotency_key: string; reference: unknown }>(
    `select idempotency_key, reference from entries where account_id = $1 and kind = 'usage' order by id`,
    [account],
  );
  assert.deepEqual(
    rows,
    events.map((event) => ({
      idempotency_key: `request:${event.idempotency_key}`,
      reference: { description: event.description, metadata: event.metadata },
    })),
  );
  for (const [index, event] of events.entries()) {
    const { account_id: _account, ...input } = event;
    assert.deepEqual(
      await ledger.usage(account, input, 'app'),
      { status: 200, body: { ...outcomes[index]!.body, replayed: true } },
      `${event.idempotency_key} replays alone`,
    );
  }
});

// Proves that the batch prices as one spend at a time would: priced events mixed with plain ones
// across several accounts (one well funded, one that runs short, one with no credits, where a
// priced spend the carry absorbs still passes, one with spend limits that batches meet, and one
// that does not exist), with keys reused across batches (replays and conflicts), cut into random
// batches. The batch reads each account's carry once and carries it through the account's priced
// events in batch order; the answers (cost and rate card included), balances, carries, grants,
// spend entries and events must equal those of the same events sent one at a time.
type PricedName = 'a' | 'b' | 'c' | 'd' | 'ghost';
type PricedEvent = { account: PricedName; key: number } & (
  | { amount: number }
  | { quantities: { input_tokens: number; output_tokens?: number } }
);
const pricedMeter = 'openai/gpt-5-mini';
const pricedEventArbitrary: fc.Arbitrary<PricedEvent> = fc.oneof(
  fc.record({
    account: fc.constantFrom<PricedName>('a', 'b', 'c', 'd', 'ghost'),
    key: fc.integer({ min: 0, max: 11 }),
    amount: fc.integer({ min: 1, max: 12 }),
  }),
  {
    arbitrary: fc.record({
      account: fc.constantFrom<PricedName>('a', 'b', 'c', 'd', 'ghost'),
      key: fc.integer({ min: 0, max: 11 }),
      // At the example catalog's rates (0.000025 and 0.0002 a token) these cost 0 to 2.5 credits.
      quantities: fc.record(
        { input_tokens: fc.integer({ min: 0, max: 40_000 }), output_tokens: fc.integer({ min: 0, max: 7_500 }) },
        { requiredKeys: ['input_tokens'] },
      ),
    }),
    weight: 2,
  },
);

it('prices priced events mixed with plain ones across accounts exactly as one spend at a time would', async () => {
  const test = await createTestApp();
  try {
    const db = test.database.db;
    let pricedRun = 0;
    /** Each account of a copy: balance, carry (as a number), grants left, spend entries and events, ids blanked. */
    const state = async (prefix: string) => {
      const { rows } = await db.query<{ account: unknown }>(
        `select jsonb_build_object('id', a.id, 'available', a.available, 'held', a.held, 'debt', a.debt,
           'carry', trim_scale(a.carry)::text,
           'remaining', (select jsonb_agg(g.remaining order by g.id) from grants g where g.account_id = a.id),
           'entries', (select jsonb_agg(jsonb_build_object('key', e.idempotency_key, 'amount', e.amount,
               'balance_after', e.balance_after, 'credits', e.grant_credits, 'meter', e.meter, 'quantities', e.quantities,
               'cost', trim_scale(e.cost)::text, 'carry_after', trim_scale(e.carry_after)::text,
               'card', e.rate_card_id, 'version', e.rate_card_version,
               'grants', (select jsonb_agg(g.position order by u.n) from unnest(e.grant_ids) with ordinality as u(id, n)
                 join (select id, row_number() over (order by id) as position from grants where account_id = a.id) g on g.id = u.id))
             order by e.id) from entries e where e.account_id = a.id and e.kind = 'usage'),
           'events', (select jsonb_agg(jsonb_build_object('type', v.type, 'data', v.data) order by v.id)
             from events v where v.account_id = a.id)) as account
         from accounts a where a.id like $1 || '%' order by a.id`,
        [prefix],
      );
      return rows.map((row) => blank(row.account, prefix));
    };
    await fc.assert(
      fc.asyncProperty(
        fc.array(pricedEventArbitrary, { minLength: 1, maxLength: 40 }),
        fc.array(fc.integer({ min: 1, max: 12 }), { minLength: 40, maxLength: 40 }),
        async (events, cuts) => {
          pricedRun += 1;
          const copies = { batched: `pb${pricedRun}-`, single: `ps${pricedRun}-` };
          for (const prefix of Object.values(copies)) {
            for (const [name, credits] of [
              ['a', 400],
              ['b', 6],
              ['c', 0],
              ['d', 300],
            ] as const) {
              await test.ledger.upsertAccount(`${prefix}${name}`, {});
              if (credits > 0) {
                await test.ledger.grant(`${prefix}${name}`, {
                  amount: credits,
                  source: 'promo',
                  reason: 'setup',
                  idempotency_key: `${prefix}${name}-grant`,
                  priority: 0,
                });
              }
            }
            await test.ledger.setSpendLimits(`${prefix}d`, { per_day: 25, per_month: 60 }, 'app');
          }
          const toInput = (event: PricedEvent, prefix: string) => ({
            account_id: `${prefix}${event.account}`,
            idempotency_key: `${prefix}k${event.key}`,
            ...('amount' in event ? { amount: event.amount } : { meter: pricedMeter, quantities: event.quantities }),
          });
          let start = 0;
          for (const size of cuts) {
            const chunk = events.slice(start, start + size);
            start += size;
            if (chunk.length === 0) break;
            const batched = await test.ledger.usageBatch(
              chunk.map((event) => toInput(event, copies.batched)),
              'app',
            );
            const order = chunk
              .map((event, index) => ({ event, index }))
              .sort((x, y) => (x.event.account < y.event.account ? -1 : x.event.account > y.event.account ? 1 : x.index - y.index));
            const single: Outcome[] = new Array(chunk.length);
            for (const { event, index } of order) {
              const { account_id: accountId, ...input } = toInput(event, copies.single);
              single[index] = await test.ledger.usage(accountId, input, 'app');
            }
            assert.deepEqual(blank(batched, copies.batched), blank(single, copies.single), 'the batch answers as single spends');
          }
          assert.deepEqual(await state(copies.batched), await state(copies.single), 'the same accounts after the batches');
        },
      ),
      {
        numRuns: Number(process.env.FC_RUNS ?? 40),
        seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED),
        path: process.env.FC_PATH,
        endOnFailure: true,
      },
    );
  } finally {
    await test.close();
  }
});
