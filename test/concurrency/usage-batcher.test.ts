import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { UsageBatcher } from '../../src/ledger/usage-batcher.js';
import { createTestApp, fundedAccount, ledgerFacts, type TestApp } from '../helpers/app.js';

let test: TestApp;
before(async () => {
  test = await createTestApp({ poolSize: 30 });
});
after(async () => {
  await test.close();
});

it('shares commits between concurrent spends and answers each as a spend alone would', async () => {
  await fundedAccount(test, 'group-1', 500);
  const batcher = new UsageBatcher(test.ledger, 2);
  const outcomes = await Promise.all(
    Array.from({ length: 120 }, (_, index) => batcher.spend('group-1', { amount: 5, idempotency_key: `group-1-${index % 110}` }, 'app')),
  );
  const first = outcomes.slice(0, 110).map((outcome) => outcome.status);
  assert.equal(first.filter((status) => status === 200).length, 100, '500 credits pay for exactly 100 spends of 5');
  assert.equal(first.filter((status) => status === 402).length, 10);
  outcomes.slice(110).forEach((replay, index) => {
    const original = outcomes[index];
    assert.equal(replay.status, original?.status, 'a replay answers as its first outcome');
    // Concurrent batches have no order between them, so either of the two may be the first.
    if (replay.status === 200) {
      assert.equal(replay.body.entry_id, original?.body.entry_id);
      assert.deepEqual([replay.body.replayed, original?.body.replayed].sort(), [false, true]);
    } else {
      // A refusal answers the same too, and the replay of the two says so in its error object.
      const { replayed: replayMarker, ...replayError } = replay.body.error as Record<string, unknown>;
      const { replayed: originalMarker, ...originalError } = (original?.body.error ?? {}) as Record<string, unknown>;
      assert.deepEqual(replayError, originalError);
      assert.deepEqual([replayMarker, originalMarker].sort(), [true, undefined]);
    }
  });
  const facts = await ledgerFacts(test, 'group-1');
  assert.equal(facts.available, 0);
  assert.equal(facts.entry_sum, 0);
  // Rows written by one transaction share its xmin: fewer transactions than spends means the
  // spends really were committed together.
  const transactions = await test.database.db.query<{ count: number }>(
    `select count(distinct xmin::text)::int as count from entries where account_id = 'group-1' and kind = 'usage'`,
  );
  assert.ok((transactions.rows[0]?.count ?? 0) < 100, `100 spends in ${transactions.rows[0]?.count} transactions`);
});

it('applies each spend alone when the batch transaction fails, so only a broken spend fails', async () => {
  await fundedAccount(test, 'group-2', 100);
  const failing = Object.create(test.ledger) as typeof test.ledger;
  failing.usageBatch = async () => {
    throw new Error('batch transaction lost');
  };
  const batcher = new UsageBatcher(failing, 1);
  const outcomes = await Promise.all(
    Array.from({ length: 10 }, (_, index) => batcher.spend('group-2', { amount: 1, idempotency_key: `group-2-${index}` }, 'app')),
  );
  assert.ok(outcomes.every((outcome) => outcome.status === 200));
  assert.equal((await ledgerFacts(test, 'group-2')).available, 90);
});

it('never writes one account in two batches at once, and a hot account gathers into few commits', async () => {
  for (const account of ['group-3a', 'group-3b', 'group-3c']) await fundedAccount(test, account, 1000);
  const watched = Object.create(test.ledger) as typeof test.ledger;
  const inFlight = new Map<string, number>();
  const overlaps: string[] = [];
  let batches = 0;
  watched.usageBatch = async (events, actors) => {
    const accounts = new Set(events.map((event) => event.account_id));
    for (const account of accounts) {
      if ((inFlight.get(account) ?? 0) > 0) overlaps.push(account);
      inFlight.set(account, (inFlight.get(account) ?? 0) + 1);
    }
    batches += 1;
    try {
      return await test.ledger.usageBatch(events, actors);
    } finally {
      for (const account of accounts) inFlight.set(account, (inFlight.get(account) ?? 0) - 1);
    }
  };
  const batcher = new UsageBatcher(watched, 4);
  const accounts = ['group-3a', 'group-3a', 'group-3a', 'group-3b', 'group-3c'];
  const outcomes = await Promise.all(
    Array.from({ length: 300 }, (_, index) =>
      batcher.spend(accounts[index % accounts.length]!, { amount: 1, idempotency_key: `group-3-${index}` }, 'app'),
    ),
  );
  assert.ok(outcomes.every((outcome) => outcome.status === 200));
  assert.deepEqual(overlaps, [], 'an account was in two batches being written at once');
  assert.ok(batches > 1 && batches < 20, `300 spends over 3 accounts in ${batches} batches`);
  assert.equal((await ledgerFacts(test, 'group-3a')).available, 1000 - 180);
  assert.equal((await ledgerFacts(test, 'group-3b')).available, 1000 - 60);
});

it('gathers spends that arrive while a batch is written into the next batch instead of sending each alone', async () => {
  const accounts = Array.from({ length: 12 }, (_, index) => `group-4-${index}`);
  for (const account of accounts) await fundedAccount(test, account, 100);
  const sizes: number[] = [];
  let releaseFirst: () => void = () => undefined;
  const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
  const slow = Object.create(test.ledger) as typeof test.ledger;
  // The first spend is held in the database until every other spend has arrived.
  slow.usage = async (accountId, input, actor) => {
    if (input.idempotency_key === 'group-4-first') await firstHeld;
    return test.ledger.usage(accountId, input, actor);
  };
  const batcher = new UsageBatcher(slow, 4, (spends) => sizes.push(spends));
  const first = batcher.spend(accounts[0]!, { amount: 1, idempotency_key: 'group-4-first' }, 'app');
  // Fewer than gather the second batch early: they wait for the first, then go together.
  const others = accounts
    .slice(1)
    .map((account, index) => batcher.spend(account, { amount: 1, idempotency_key: `group-4-${index}` }, 'app'));
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(sizes, [1], 'with a batch in flight, 11 waiting spends do not start batches of their own');
  releaseFirst();
  const outcomes = await Promise.all([first, ...others]);
  assert.ok(outcomes.every((outcome) => outcome.status === 200));
  assert.deepEqual(sizes, [1, 11], 'the 11 went as one batch once the first was written');
  for (const account of accounts) assert.equal((await ledgerFacts(test, account)).available, 99);
});

it('sends the next batch to the database before it answers the spends of the last one', async () => {
  await fundedAccount(test, 'group-5', 100);
  const events: string[] = [];
  let releaseFirst: () => void = () => undefined;
  const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
  const watched = Object.create(test.ledger) as typeof test.ledger;
  watched.usage = async (accountId, input, actor) => {
    events.push(`write ${input.idempotency_key}`);
    if (input.idempotency_key === 'group-5-a') await firstHeld;
    return test.ledger.usage(accountId, input, actor);
  };
  const batcher = new UsageBatcher(watched, 4);
  const first = batcher.spend('group-5', { amount: 1, idempotency_key: 'group-5-a' }, 'app').then((outcome) => {
    events.push('answer group-5-a');
    return outcome;
  });
  // The same account: it waits for the first batch to end.
  const second = batcher.spend('group-5', { amount: 1, idempotency_key: 'group-5-b' }, 'app');
  await new Promise((resolve) => setTimeout(resolve, 20));
  releaseFirst();
  await Promise.all([first, second]);
  assert.deepEqual(events.slice(0, 3), ['write group-5-a', 'write group-5-b', 'answer group-5-a']);
  assert.equal((await ledgerFacts(test, 'group-5')).available, 98);
});

it('is idle only once every spend it holds is written and answered, so closing never cuts one off', async () => {
  await fundedAccount(test, 'group-6', 100);
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => (release = resolve));
  const slow = Object.create(test.ledger) as typeof test.ledger;
  slow.usage = async (accountId, input, actor) => {
    await held;
    return test.ledger.usage(accountId, input, actor);
  };
  slow.usageBatch = async (events, actors) => {
    await held;
    return test.ledger.usageBatch(events, actors);
  };
  const batcher = new UsageBatcher(slow, 2);
  const answered: string[] = [];
  const spends = Array.from({ length: 5 }, (_, index) =>
    batcher.spend('group-6', { amount: 1, idempotency_key: `group-6-${index}` }, 'app').then((outcome) => {
      answered.push(`${index}:${outcome.status}`);
    }),
  );
  let idle = false;
  const idleNow = batcher.idle().then(() => {
    idle = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 30));
  assert.equal(idle, false, 'not idle while spends wait');
  release();
  await idleNow;
  assert.equal(answered.length, 5, 'every spend was answered before the batcher said it was idle');
  await Promise.all(spends);
  assert.equal((await ledgerFacts(test, 'group-6')).available, 95);
  await batcher.idle();
});
