import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import pg from 'pg';
import { migrate, migrationsDirectory, readMigrations } from '../../src/db/migrate.js';
import { createEmptyDatabase } from '../helpers/database.js';

it('applies every migration once when three processes migrate at the same time', async () => {
  const url = await createEmptyDatabase();
  const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
  const expected = readMigrations().map((migration) => migration.version);
  assert.deepEqual(
    results.flat().sort((a, b) => a - b),
    expected,
    'each migration was applied by exactly one of them',
  );
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const rows = (await client.query<{ version: number }>('select version from tally_migrations order by version')).rows;
    assert.deepEqual(
      rows.map((row) => row.version),
      expected,
    );
    assert.deepEqual(await migrate(url), [], 'a later start finds nothing to do');
  } finally {
    await client.end();
  }
});

it('refuses a migration without a rollback note, or out of sequence', () => {
  const directory = mkdtempSync(join(tmpdir(), 'tally-migrations-'));
  writeFileSync(join(directory, '0001-first.sql'), '-- Rollback: drop table t;\ncreate table t ();');
  writeFileSync(join(directory, '0003-skipped.sql'), '-- Rollback: nothing\nselect 1;');
  assert.throws(() => readMigrations(directory), /out of sequence/);
  writeFileSync(join(directory, '0002-silent.sql'), 'select 1;');
  assert.throws(() => readMigrations(directory), /roll it back/);
});

/**
 * The statements of a migration's "-- Rollback:" note: its lines indented by "--   ", or, when the
 * note names a file of migrations/rollback/, that file (a rollback too long to keep in a note).
 */
function rollbackStatements(sql: string): string {
  const file = /^-- .*\b(rollback\/\d{4}-[a-z0-9-]+\.sql)/m.exec(sql)?.[1];
  if (file !== undefined) return readFileSync(join(migrationsDirectory, file), 'utf8');
  const lines = sql.split('\n');
  const start = lines.findIndex((line) => line.startsWith('-- Rollback:'));
  const statements: string[] = [];
  for (const line of lines.slice(start + 1)) {
    const statement = /^-- {3}(.*)$/.exec(line);
    if (statement?.[1] === undefined) break;
    statements.push(statement[1]);
  }
  return statements.join('\n');
}

it("rolls back every migration, newest first, with its note's statements, and migrates again", async () => {
  const url = await createEmptyDatabase();
  await migrate(url);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const applied = async () =>
      (await client.query<{ version: number }>('select version from tally_migrations order by version')).rows.map((row) => row.version);
    for (const migration of readMigrations().reverse()) {
      const statements = rollbackStatements(migration.sql);
      assert.match(statements, new RegExp(`delete from tally_migrations where version = ${migration.version};`), migration.name);
      await client.query('begin');
      await client.query(statements);
      await client.query('commit');
      assert.deepEqual(
        await applied(),
        Array.from({ length: migration.version - 1 }, (_, index) => index + 1),
        `after rolling back ${migration.name}`,
      );
    }
    const tables = await client.query(
      `select tablename from pg_tables where schemaname = 'public' and tablename not in ('tally_migrations', 'tally_function_files')`,
    );
    assert.deepEqual(tables.rows, [], 'nothing is left but the bookkeeping tables');
    assert.deepEqual(
      await migrate(url),
      readMigrations().map((migration) => migration.version),
    );
  } finally {
    await client.end();
  }
});

it('rolls 0013 back with its data: spends since keep their key and first answer, and a key used on two accounts refuses the rollback', async () => {
  const url = await createEmptyDatabase();
  // Up to 0013 only: a rollback note undoes its own migration when it is the newest applied.
  await migrate(url, undefined, { versionMax: 13 });
  const rollback = rollbackStatements(readMigrations().find((migration) => migration.version === 13)!.sql);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const call = async (sql: string): Promise<{ status: number; body: Record<string, unknown> }> => (await client.query(sql)).rows[0].result;
  try {
    await client.query(`insert into accounts (id) values ('roll-a'), ('roll-b')`);
    for (const account of ['roll-a', 'roll-b']) {
      await client.query(`select tally_add_grant($1, 'promo', 100, 0, null, 'seed', 'grant', '{}', 'system', null, now())`, [account]);
    }
    const spent = await call(`select tally_usage('roll-a', 10, 'k1', 'h1', 'app', '{}', null) as result`);
    assert.equal(spent.status, 200);
    assert.equal((await call(`select tally_usage('roll-a', 1000, 'k2', 'h2', 'app', '{}', null) as result`)).status, 402);
    assert.equal(
      (await client.query(`select count(*)::int as count from request_keys where key = 'k1'`)).rows[0].count,
      0,
      'a successful spend keeps its key in its entry only',
    );

    await client.query('begin');
    await client.query(rollback);
    await client.query('commit');
    const stored = (
      await client.query(
        `select operation, payload_hash, status_code, response from request_keys where account_id = 'roll-a' and key = 'k1'`,
      )
    ).rows;
    assert.deepEqual(
      stored,
      [{ operation: 'usage', payload_hash: 'h1', status_code: 200, response: spent.body }],
      'the spend is back in request_keys with its first answer',
    );
    assert.deepEqual(await call(`select tally_usage('roll-a', 10, 'k1', 'h1', 'app', '{}', null) as result`), {
      status: 200,
      body: { ...spent.body, replayed: true },
    });
    assert.equal(
      (await call(`select tally_usage('roll-b', 10, 'k1', 'h1', 'app', '{}', null) as result`)).status,
      409,
      'keys are unique across accounts again',
    );
    const refusedAgain = await call(`select tally_usage('roll-a', 1000, 'k2', 'h2', 'app', '{}', null) as result`);
    assert.deepEqual(
      [refusedAgain.status, (refusedAgain.body.error as { replayed?: boolean }).replayed],
      [402, true],
      'the refusal is still the first outcome of its key',
    );
    const columns = await client.query(
      `select column_name from information_schema.columns where table_name = 'entries' and column_name = 'payload_hash'`,
    );
    assert.equal(columns.rowCount, 0);
    const primaryKey = await client.query(
      `select pg_get_constraintdef(oid) as definition from pg_constraint where conname = 'request_keys_pkey'`,
    );
    assert.equal(primaryKey.rows[0].definition, 'PRIMARY KEY (key)');

    assert.deepEqual(await migrate(url, undefined, { versionMax: 13 }), [13], 'and 0013 applies again');
    assert.deepEqual(await call(`select tally_usage('roll-a', 10, 'k1', 'h1', 'app', '{}', null) as result`), {
      status: 200,
      body: { ...spent.body, replayed: true },
    });
    assert.equal(
      (await call(`select tally_usage('roll-b', 10, 'k1', 'h1', 'app', '{}', null) as result`)).status,
      200,
      'the same key on another account is another request',
    );
    await client.query('begin');
    await assert.rejects(client.query(rollback), /used on more than one account/);
    await client.query('rollback');
    const applied = await client.query<{ version: number }>('select max(version) as version from tally_migrations');
    assert.equal(applied.rows[0]?.version, 13, 'the refused rollback changed nothing');
  } finally {
    await client.end();
  }
});

it('rolls priced usage back to functions that work without it, and migrates again', async () => {
  const url = await createEmptyDatabase();
  await migrate(url);
  const pricing = readMigrations().find((migration) => migration.name.endsWith('-priced-usage'));
  assert.ok(pricing !== undefined);
  // The migrations after it are rolled back first, newest first, so that its note applies alone.
  const newer = readMigrations()
    .filter((migration) => migration.version > pricing.version)
    .reverse();
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  const call = async (sql: string): Promise<{ status: number; body: Record<string, unknown> }> => (await client.query(sql)).rows[0].result;
  try {
    await client.query(`insert into accounts (id) values ('roll-p')`);
    await client.query(`select tally_add_grant('roll-p', 'promo', 100, 0, null, 'seed', 'grant', '{}', 'system', null, now())`);
    await client.query('begin');
    for (const migration of newer) await client.query(rollbackStatements(migration.sql));
    await client.query(rollbackStatements(pricing.sql));
    await client.query('commit');
    const left = await client.query(
      `select proname from pg_proc where proname ~ '(price|priced|rate_card|quote|spend_limit_passed)' and pronamespace = 'public'::regnamespace`,
    );
    assert.deepEqual(left.rows, [], 'no pricing function is left');
    const steps = await client.query(
      `select proname from pg_proc where proname like 'tally\\_usage\\_batch\\_%' and pronamespace = 'public'::regnamespace`,
    );
    assert.deepEqual(steps.rows, [], "no step of this release's usage batch is left beside the batch put back");
    const overloads = await client.query(
      `select proname, count(*)::int as count from pg_proc where proname in ('tally_usage', 'tally_hold', 'tally_release') group by proname order by proname`,
    );
    assert.deepEqual(
      overloads.rows,
      [
        { proname: 'tally_hold', count: 1 },
        { proname: 'tally_release', count: 1 },
        { proname: 'tally_usage', count: 1 },
      ],
      'one signature each, as before',
    );
    // The functions of the release before work on the rolled-back schema.
    assert.equal((await call(`select tally_usage('roll-p', 10, 'k1', 'h1', 'app', '{}', null) as result`)).status, 200);
    const batch = (
      await client.query(
        `select tally_usage_batch(array['roll-p', 'roll-p'], array[1, 2]::bigint[], array['b1', 'b2'], array['h', 'h'], array['{}', '{}']::jsonb[], array['app', 'app'], null) as result`,
      )
    ).rows[0].result as { status: number }[];
    assert.deepEqual(
      batch.map((result) => result.status),
      [200, 200],
    );
    const held = await call(`select tally_hold('roll-p', 5, 60, 'h1', 'h', 'app', null) as result`);
    assert.equal(held.status, 201);
    await client.query(`select tally_capture($1, 2, 'app', null)`, [Number(String(held.body.hold_id).replace('hold_', ''))]);
    const entries = await client.query(`select tally_entry_json(e) as entry from entries e where account_id = 'roll-p' order by id`);
    assert.ok(entries.rows.every((row) => !('cost' in row.entry)));
    assert.deepEqual(
      await migrate(url),
      [pricing.version, ...newer.map((migration) => migration.version).reverse()],
      'and the migrations apply again',
    );
    await client.query(`select tally_sync_catalog_pricing('[]', null, '[]', null)`);
  } finally {
    await client.end();
  }
});
