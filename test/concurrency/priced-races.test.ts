import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { type TestApp, createTestApp, fundedAccount, ledgerFacts } from '../helpers/app.js';
import { toUnits, unitsPerCredit } from '../helpers/priced-model.js';

// Invariant 16 under concurrency: two Tally processes on one database take priced spends, priced
// holds and their captures, replays and plain spends for one account all at once. Whatever order
// the account's row lock gives them, the credits the priced entries charged are exactly the floor
// of their total exact cost, the carry is the rest, and the balance is the fold of the entries.
let first: TestApp;
let second: TestApp;
before(async () => {
  first = await createTestApp({ poolSize: 30 });
  second = await createTestApp({ poolSize: 30, database: first.database });
});
after(async () => {
  await second.close();
  await first.close();
});

const mini = 'openai/gpt-5-mini';

it('charges floor(total exact cost) for parallel priced spends, holds and captures on two processes', async () => {
  await fundedAccount(first, 'race-priced', 400);
  const calls: Promise<unknown>[] = [];
  for (let index = 0; index < 120; index += 1) {
    const tally = index % 2 === 0 ? first : second;
    // 1 to 120 input and 1 to 7 thousand output tokens: costs of a few hundredths to 1.4 credits.
    const quantities = { input_tokens: 1 + ((index * 37) % 120), output_tokens: 1000 * (1 + (index % 7)) };
    calls.push(tally.call('POST', '/v1/accounts/race-priced/usage', { meter: mini, quantities, idempotency_key: `u-${index}` }));
    if (index % 4 === 0) {
      // A replay of an earlier key, sent from the other process.
      const other = tally === first ? second : first;
      calls.push(other.call('POST', '/v1/accounts/race-priced/usage', { meter: mini, quantities, idempotency_key: `u-${index}` }));
    }
    if (index % 5 === 0) calls.push(tally.call('POST', '/v1/accounts/race-priced/usage', { amount: 1, idempotency_key: `p-${index}` }));
    if (index % 6 === 0) {
      calls.push(
        (async () => {
          const held = await tally.call('POST', '/v1/accounts/race-priced/holds', {
            meter: mini,
            quantities: { output_tokens: 8000 },
            idempotency_key: `h-${index}`,
          });
          if (held.status !== 201) return;
          await tally.call('POST', `/v1/holds/${held.body.hold_id}/capture`, { quantities: { output_tokens: 1000 * (index % 8) } });
        })(),
      );
    }
  }
  await Promise.all(calls);
  const { rows } = await first.database.db.query<{ cost: string; charged: string; carry: string; spends: number }>(
    `select coalesce(sum(e.cost), 0)::text as cost,
       coalesce(sum(case when e.kind = 'usage' then -e.amount else (e.reference->>'captured')::bigint end), 0)::text as charged,
       (select carry::text from accounts where id = 'race-priced') as carry, count(*)::int as spends
     from entries e where e.account_id = 'race-priced' and e.meter is not null and e.kind in ('usage', 'capture')`,
  );
  const row = rows[0];
  assert.ok(row !== undefined);
  assert.ok(row.spends >= 120, `every priced usage and capture wrote its entry (${row.spends})`);
  const cost = toUnits(row.cost);
  assert.equal(BigInt(row.charged), cost / unitsPerCredit, 'the credits charged are the floor of the total exact cost');
  assert.equal(toUnits(row.carry), cost % unitsPerCredit, 'the carry is the rest');
  const facts = await ledgerFacts(first, 'race-priced');
  assert.equal(facts.available, facts.entry_sum, 'the balance is the fold of the entries');
  assert.equal(facts.held, 0, 'every hold was captured');
});
