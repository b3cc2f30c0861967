import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import type { Catalog } from '../../src/billing/catalog.js';
import type { Outcome } from '../../src/ledger/ledger.js';
import { TestClock, type TestApp, createTestApp, fundedAccount, testCatalog } from '../helpers/app.js';
import { type ModelAnswer, type ModelRates, PricedModel, fromUnits, toUnits, unitsPerCredit } from '../helpers/priced-model.js';

// Invariant 16 against a reference model (test/helpers/priced-model.ts, exact decimals in
// BigInt): over any sequence of an account's priced spends, holds, captures, voids, refusals,
// replays, plain spends, grants and price changes, the database answers as the model does, its
// balance, held and carry agree with the model after every step, and the credits its priced
// entries charged are exactly the floor of their total exact cost. A failure prints its seed and
// path; replay it with FC_SEED=<seed> FC_PATH=<path> npm test -- priced-usage-property.

const meter = 'm';
const dimensions = ['a', 'b'] as const;

/** A catalog with one meter of two dimensions and one card, c. */
function pricedCatalog(rates: Record<string, string>): Catalog {
  return {
    ...testCatalog(),
    meters: [{ id: meter, dimensions: [...dimensions] }],
    rate_cards: [{ id: 'c', rates: { [meter]: rates } }],
    default_rate_card: 'c',
    plans: testCatalog().plans.map((plan) => ({ ...plan, rate_card: undefined })),
  };
}

let test: TestApp;
const clock = new TestClock();
before(async () => {
  test = await createTestApp({ catalog: pricedCatalog({ a: '0.000125', b: '0.001' }), clock });
});
after(async () => {
  await test.close();
});

type Quantities = Record<string, number>;
type Step =
  | { kind: 'usage'; key: number; quantities: Quantities }
  | { kind: 'plain'; key: number; amount: number }
  | { kind: 'hold'; key: number; quantities: Quantities }
  | { kind: 'capture'; key: number; quantities: Quantities | null }
  | { kind: 'void'; key: number }
  | { kind: 'grant'; amount: number }
  | { kind: 'price'; rates: { a: string; b: string } }
  | { kind: 'replay'; pick: number }
  | { kind: 'batch'; events: { key: number; quantities: Quantities | null; amount: number }[] };

// Rates up to 3 credits per unit with up to 12 decimal places, the smallest rate often.
const rate = fc.oneof(
  fc.bigInt({ min: 0n, max: 3n * unitsPerCredit }).map(fromUnits),
  fc.constantFrom('0.000000000001', '0.000125', '0.0000125', '0', '1'),
);
// Token counts, sometimes near 2^53 (whose cost at a large rate no balance can pay).
const quantity = fc.oneof(
  { arbitrary: fc.integer({ min: 0, max: 20_000 }), weight: 6 },
  fc.constantFrom(0, 1, 2 ** 53 - 1, 2 ** 53 - 2, 2 ** 52),
);
const quantities = fc.record({ a: quantity, b: quantity }, { requiredKeys: ['a'] });
const key = fc.integer({ min: 0, max: 9 });
const stepArbitrary: fc.Arbitrary<Step> = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constant('usage' as const), key, quantities }), weight: 4 },
  fc.record({ kind: fc.constant('plain' as const), key, amount: fc.integer({ min: 1, max: 30 }) }),
  { arbitrary: fc.record({ kind: fc.constant('hold' as const), key, quantities }), weight: 2 },
  {
    arbitrary: fc.record({ kind: fc.constant('capture' as const), key, quantities: fc.option(quantities, { nil: null }) }),
    weight: 2,
  },
  fc.record({ kind: fc.constant('void' as const), key }),
  fc.record({ kind: fc.constant('grant' as const), amount: fc.integer({ min: 1, max: 200 }) }),
  fc.record({ kind: fc.constant('price' as const), rates: fc.record({ a: rate, b: rate }) }),
  fc.record({ kind: fc.constant('replay' as const), pick: fc.nat() }),
  // Batches of priced and plain spends of the account (small quantities: a batch with a spend no
  // balance could pay fails as a whole, which the single calls above cover).
  {
    arbitrary: fc.record({
      kind: fc.constant('batch' as const),
      events: fc.array(
        fc.record({
          key: fc.integer({ min: 0, max: 14 }),
          quantities: fc.option(fc.record({ a: fc.integer({ min: 0, max: 20_000 }), b: fc.integer({ min: 0, max: 20_000 }) }), {
            nil: null,
          }),
          amount: fc.integer({ min: 1, max: 5 }),
        }),
        { minLength: 1, maxLength: 8 },
      ),
    }),
    weight: 3,
  },
);

interface Sent {
  kind: 'usage' | 'plain' | 'hold';
  key: number;
  quantities?: Quantities;
  amount?: number;
}

/** The database's answer in the model's terms. */
function seen(outcome: Outcome): ModelAnswer {
  const body = outcome.body as {
    amount?: number;
    cost?: string;
    rate_card?: { version: number };
    replayed?: boolean;
    error?: { replayed?: boolean };
  };
  if (outcome.status >= 300) return { status: outcome.status, ...(body.error?.replayed === true ? { replayed: true } : {}) };
  return {
    status: outcome.status,
    amount: body.amount,
    cost: body.cost,
    version: body.rate_card?.version,
    ...(body.replayed ? { replayed: true } : {}),
  };
}

/** A refusal raised as an error (400, 409) in the model's terms. */
async function statusOf(call: Promise<unknown>): Promise<number> {
  try {
    await call;
    return 200;
  } catch (error) {
    const status = (error as { status?: number }).status;
    if (status === undefined) throw error;
    return status;
  }
}

const trim = (answer: ModelAnswer): ModelAnswer =>
  Object.fromEntries(Object.entries(answer).filter(([, value]) => value !== undefined)) as ModelAnswer;

async function send(account: string, model: PricedModel, sent: Sent): Promise<void> {
  const idempotency_key = `${account}-${sent.key}`;
  if (sent.kind === 'plain') {
    const expected = model.usage(idempotency_key, { amount: sent.amount ?? 0 });
    const outcome = await test.ledger.usage(account, { amount: sent.amount, idempotency_key }, 'app');
    assert.deepEqual(trim(seen(outcome)), trim(expected));
    return;
  }
  const spend = { meter, quantities: sent.quantities ?? {}, idempotency_key };
  const expected =
    sent.kind === 'usage' ? model.usage(idempotency_key, { quantities: spend.quantities }) : model.hold(idempotency_key, spend.quantities);
  const outcome =
    sent.kind === 'usage'
      ? await test.ledger.usage(account, spend, 'app').catch((error: { status: number }) => ({ status: error.status, body: {} }))
      : await test.ledger
          .hold(account, { ...spend, expires_in_seconds: 3600 }, 'app')
          .catch((error: { status: number }) => ({ status: error.status, body: {} }));
  assert.deepEqual(trim(seen(outcome)), trim(expected));
}

async function holdIdOf(account: string, key: number): Promise<string | undefined> {
  const { rows } = await test.database.db.query<{ id: number }>('select id from holds where account_id = $1 and idempotency_key = $2', [
    account,
    `${account}-${key}`,
  ]);
  return rows[0] === undefined ? undefined : `hold_${rows[0].id}`;
}

async function apply(account: string, model: PricedModel, history: Sent[], step: Step): Promise<void> {
  switch (step.kind) {
    case 'usage':
    case 'plain':
    case 'hold': {
      const sent: Sent = {
        kind: step.kind,
        key: step.key,
        ...(step.kind === 'plain' ? { amount: step.amount } : { quantities: step.quantities }),
      };
      history.push(sent);
      return send(account, model, sent);
    }
    case 'replay': {
      const sent = history[step.pick % Math.max(history.length, 1)];
      if (sent !== undefined) await send(account, model, sent);
      return;
    }
    case 'capture':
    case 'void': {
      const holdKey = `${account}-${step.key}`;
      if (!model.holds.has(holdKey)) return;
      const holdId = await holdIdOf(account, step.key);
      assert.ok(holdId !== undefined, 'the model has a hold the database does not');
      if (step.kind === 'void') {
        assert.equal(await statusOf(test.ledger.void(holdId, 'app')), model.void(holdKey).status);
        return;
      }
      const expected = model.capture(holdKey, step.quantities ?? undefined);
      if (expected.status !== 200) {
        assert.equal(
          await statusOf(
            step.quantities === null
              ? test.ledger.capture(holdId, undefined, 'app')
              : test.ledger.capturePriced(holdId, step.quantities, 'app'),
          ),
          expected.status,
        );
        return;
      }
      const answer = (
        step.quantities === null
          ? await test.ledger.capture(holdId, undefined, 'app')
          : await test.ledger.capturePriced(holdId, step.quantities, 'app')
      ) as { captured: number; cost: string; rate_card: { version: number } };
      assert.deepEqual([answer.captured, answer.cost, answer.rate_card.version], [expected.amount, expected.cost, expected.version]);
      return;
    }
    case 'batch': {
      const expected = step.events.map((event) =>
        model.usage(`${account}-${event.key}`, event.quantities === null ? { amount: event.amount } : { quantities: event.quantities }),
      );
      const outcomes = await test.ledger.usageBatch(
        step.events.map((event) => ({
          account_id: account,
          idempotency_key: `${account}-${event.key}`,
          ...(event.quantities === null ? { amount: event.amount } : { meter, quantities: event.quantities }),
        })),
        'app',
      );
      assert.deepEqual(outcomes.map(seen).map(trim), expected.map(trim));
      return;
    }
    case 'grant':
      await test.ledger.grant(account, {
        amount: step.amount,
        source: 'promo',
        reason: 'model',
        idempotency_key: `${account}-grant-${model.available}-${Math.random()}`,
        priority: 0,
      });
      model.grant(step.amount);
      return;
    case 'price': {
      const published = await test.parts.rateCards.publish('c', { rates: { [meter]: step.rates } });
      model.publish({ a: toUnits(step.rates.a), b: toUnits(step.rates.b) });
      assert.equal(published.version, model.version);
      return;
    }
  }
}

async function assertAgrees(account: string, model: PricedModel): Promise<void> {
  const { rows } = await test.database.db.query<{
    available: number;
    held: number;
    carry: string;
    cost: string;
    charged: string;
  }>(
    `select a.available, a.held, trim_scale(a.carry)::text as carry,
       coalesce(trim_scale(sum(e.cost) filter (where e.kind in ('usage', 'capture'))), 0)::text as cost,
       coalesce(sum(case when e.kind = 'usage' then -e.amount else (e.reference->>'captured')::bigint end)
         filter (where e.kind in ('usage', 'capture') and e.meter is not null), 0)::text as charged
     from accounts a left join entries e on e.account_id = a.id and e.meter is not null
     where a.id = $1 group by a.id`,
    [account],
  );
  const row = rows[0];
  assert.ok(row !== undefined);
  assert.deepEqual(
    { available: row.available, held: row.held, carry: row.carry },
    { available: model.available, held: model.held, carry: fromUnits(model.carry) },
  );
  assert.deepEqual({ cost: toUnits(row.cost), charged: BigInt(row.charged) }, { cost: model.pricedCost, charged: model.pricedCharged });
  assert.equal(BigInt(row.charged), toUnits(row.cost) / unitsPerCredit, 'the credits charged are the floor of the total exact cost');
}

async function currentRates(): Promise<{ rates: ModelRates; version: number }> {
  const card = (await test.parts.rateCards.current()).rate_cards.find((candidate) => candidate.id === 'c');
  assert.ok(card !== undefined);
  const rates = card.rates[meter] ?? {};
  return { rates: { a: toUnits(rates.a ?? '0'), b: toUnits(rates.b ?? '0') }, version: card.version };
}

let run = 0;
describe('priced spending against the reference model', () => {
  it('charges exactly floor(total exact cost) over any sequence, and agrees with the model after every step', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 0, max: 100 }), fc.array(stepArbitrary, { minLength: 1, maxLength: 25 }), async (start, steps) => {
        run += 1;
        const account = `pp-${run}`;
        await fundedAccount(test, account, start);
        const { rates, version } = await currentRates();
        const model = new PricedModel(rates, version);
        model.grant(start);
        const history: Sent[] = [];
        for (const step of steps) {
          await apply(account, model, history, step);
          await assertAgrees(account, model);
        }
      }),
      {
        numRuns: Number(process.env.FC_RUNS ?? 60),
        seed: process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED),
        path: process.env.FC_PATH,
        endOnFailure: true,
      },
    );
  });
});

describe('decimal edge cases', () => {
  const setRates = async (rates: Record<string, string>) => test.parts.rateCards.publish('c', { rates: { [meter]: rates } });

  it('prices 12 decimal places times quantities near 2^53 exactly, and carries the remainder', async () => {
    await setRates({ a: '0.000000000001', b: '0.999999999999' });
    await fundedAccount(test, 'edge-1', 10_000);
    const first = await test.ledger.usage('edge-1', { meter, quantities: { a: Number.MAX_SAFE_INTEGER }, idempotency_key: 'e1' }, 'app');
    assert.deepEqual([first.body.amount, first.body.cost], [9007, '9007.199254740991']);
    const second = await test.ledger.usage('edge-1', { meter, quantities: { a: 1, b: 1 }, idempotency_key: 'e2' }, 'app');
    // 0.199254740991 + 0.000000000001 + 0.999999999999 = 1.199254740991.
    assert.deepEqual([second.body.amount, second.body.cost], [1, '1']);
    const { rows } = await test.database.db.query<{ carry: string }>(`select carry::text as carry from accounts where id = 'edge-1'`);
    assert.equal(rows[0]?.carry, '0.199254740991');
  });

  it('charges a credit only at the call whose remainder crosses an integer, after thousands that charge 0', async () => {
    // 0.000299999999 a call: 3333 calls make 0.999899996667, the 3334th makes 1.000199996666.
    await setRates({ a: '0.000299999999', b: '0' });
    await fundedAccount(test, 'edge-2', 0);
    const calls = 3334;
    const amounts: number[] = [];
    for (let start = 0; start < calls; start += 1000) {
      const events = Array.from({ length: Math.min(1000, calls - start) }, (_, index) => ({
        account_id: 'edge-2',
        meter,
        quantities: { a: 1 },
        idempotency_key: `cross-${start + index}`,
      }));
      const outcomes = await test.ledger.usageBatch(events, 'app');
      for (const outcome of outcomes) {
        assert.ok(outcome.status === 200 || outcome.status === 402, JSON.stringify(outcome));
        amounts.push(outcome.status === 200 ? (outcome.body.amount as number) : -1);
      }
    }
    assert.deepEqual(
      amounts.slice(0, 3333).every((amount) => amount === 0),
      true,
      'every call before the crossing charges 0, accepted at a zero balance',
    );
    assert.equal(amounts[3333], -1, 'the crossing call charges 1 credit, which a zero balance refuses');
    const { rows } = await test.database.db.query<{ carry: string; entries: number }>(
      `select a.carry::text as carry, (select count(*)::int from entries e where e.account_id = a.id and e.kind = 'usage') as entries
       from accounts a where a.id = 'edge-2'`,
    );
    assert.deepEqual(rows[0], { carry: '0.999899996667', entries: 3333 }, 'the refusal changed neither balance nor carry');
    await test.ledger.grant('edge-2', { amount: 1, source: 'promo', reason: 'cross', idempotency_key: 'edge-2-grant', priority: 0 });
    const crossed = await test.ledger.usage('edge-2', { meter, quantities: { a: 1 }, idempotency_key: 'cross-again' }, 'app');
    assert.deepEqual([crossed.status, crossed.body.amount], [200, 1]);
  });
});

describe('a rate change at a chosen instant', () => {
  it('prices the spends on each side of it by their own version, and never reprices a replay', async () => {
    const instant = new Date(clock.now().getTime() + 60_000);
    const before = await test.parts.rateCards.publish('c', { rates: { [meter]: { a: '0.5', b: '0' } } });
    const scheduled = await test.parts.rateCards.publish('c', {
      rates: { [meter]: { a: '0.75', b: '0' } },
      effective_at: instant.toISOString(),
    });
    await fundedAccount(test, 'instant', 100);
    const spend = (key: string) => test.ledger.usage('instant', { meter, quantities: { a: 2 }, idempotency_key: key }, 'app');
    clock.advanceSeconds(59.999);
    const justBefore = await spend('before');
    clock.advanceSeconds(0.001);
    const atInstant = await spend('at');
    assert.deepEqual(
      [justBefore.body.cost, justBefore.body.rate_card, atInstant.body.cost, atInstant.body.rate_card],
      ['1', { id: 'c', version: before.version }, '1.5', { id: 'c', version: scheduled.version }],
    );
    const replay = await spend('before');
    assert.deepEqual(replay.body, { ...justBefore.body, replayed: true });
    const { rows } = await test.database.db.query<{ key: string; version: number; cost: string }>(
      `select idempotency_key as key, rate_card_version as version, cost::text as cost from entries where account_id = 'instant' and kind = 'usage' order by id`,
    );
    assert.deepEqual(rows, [
      { key: 'request:before', version: before.version, cost: '1' },
      { key: 'request:at', version: scheduled.version, cost: '1.5' },
    ]);
  });
});
