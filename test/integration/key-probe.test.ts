import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import pg from 'pg';
import { createTestDatabase, type TestDatabase } from '../helpers/database.js';

// Proves: a spend finds out whether its key was seen before through the key index, not by
// reading every entry of its account, even when the statistics were taken while each account
// had one entry (a fresh install, a bulk import) and one account has since gathered thousands.
// Before migration 0017 the planner read the whole account for each spend in that state. The
// test counts the index entries that the spends themselves read from entries_by_account, within
// their own transaction, so it checks the plans the functions really run.
let database: TestDatabase;
let client: pg.Client;
const hotEntries = 4_000;

before(async () => {
  database = await createTestDatabase(2);
  client = new pg.Client({ connectionString: database.url });
  await client.connect();
  // 2,000 accounts of one grant each, then statistics taken in that state.
  await client.query(`insert into accounts (id) select 'acct-' || i from generate_series(1, 2000) i union all select 'hot'`);
  await client.query(`select tally_admin_grant('acct-' || i, 10, 'promo', 0, null, '{}'::jsonb, 'grant-' || i, 'h', 'setup', null)
                      from generate_series(1, 2000) i`);
  await client.query(`select tally_admin_grant('hot', 1000000, 'promo', 0, null, '{}'::jsonb, 'grant-hot', 'h', 'setup', null)`);
  await client.query('analyze');
  // Then the hot account gathers its entries, with no ANALYZE after.
  const warm = await client.query<{ status: number }>(
    `select (tally_usage('hot', 1, 'warm-' || i, 'h', 'app', '{}'::jsonb, null) ->> 'status')::integer as status from generate_series(1, ${hotEntries}) i`,
  );
  assert.ok(
    warm.rows.every((row) => row.status === 200),
    'the hot account gathers its entries',
  );
  assert.equal((await client.query(`select count(*)::integer as count from entries where account_id like 'acct-%'`)).rows[0].count, 2000);
});
after(async () => {
  await client?.end();
  await database.close();
});

/** Index entries read from entries_by_account by `statement`, counted inside its transaction. */
async function entriesByAccountRead(statement: string, values: unknown[]): Promise<number> {
  await client.query('begin');
  try {
    const before = await client.query<{ read: string }>(`select pg_stat_get_xact_tuples_returned('entries_by_account'::regclass) as read`);
    await client.query(statement, values);
    const afterwards = await client.query<{ read: string }>(
      `select pg_stat_get_xact_tuples_returned('entries_by_account'::regclass) as read`,
    );
    return Number(afterwards.rows[0]!.read) - Number(before.rows[0]!.read);
  } finally {
    await client.query('rollback');
  }
}

it('reads no entries of the account to check a batch of keys on a busy account', async () => {
  const count = 32;
  const read = await entriesByAccountRead(
    'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], null)',
    [
      Array(count).fill('hot'),
      Array(count).fill(1),
      Array.from({ length: count }, (_, i) => `batch-${i}`),
      Array(count).fill('h'),
      Array(count).fill({}),
      Array(count).fill('app'),
    ],
  );
  assert.ok(read < hotEntries, `a batch of ${count} new keys read ${read} entries of an account holding ${hotEntries + 1}`);
});

it('reads no entries of the account to check one spend on a busy account', async () => {
  // Several spends, so that PL/pgSQL has moved to its generic plans (after five runs).
  let read = 0;
  for (let i = 0; i < 8; i += 1) {
    read += await entriesByAccountRead(`select tally_usage('hot', 1, $1, 'h', 'app', '{}'::jsonb, null)`, [`single-${i}`]);
  }
  assert.ok(read < hotEntries, `8 spends with new keys read ${read} entries of an account holding ${hotEntries + 1}`);
});

it('still answers a replay from the entry that holds its key', async () => {
  const first = await client.query<{ result: { status: number; body: { replayed: boolean; entry_id: string } } }>(
    `select tally_usage('hot', 1, 'replayed-key', 'h', 'app', '{}'::jsonb, null) as result`,
  );
  const again = await client.query<{ result: { status: number; body: { replayed: boolean; entry_id: string } } }>(
    `select tally_usage('hot', 1, 'replayed-key', 'h', 'app', '{}'::jsonb, null) as result`,
  );
  assert.equal(first.rows[0]!.result.body.replayed, false);
  assert.equal(again.rows[0]!.result.body.replayed, true);
  assert.equal(again.rows[0]!.result.body.entry_id, first.rows[0]!.result.body.entry_id);
});
