import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { it } from 'node:test';
import pg from 'pg';
import { migrate, readMigrations } from '../../src/db/migrate.js';
import { createEmptyDatabase } from '../helpers/database.js';

it('applies every migration once when three processes migrate at the same time', async () => {
  const url = await createEmptyDatabase();
  const results = await Promise.all([migrate(url), migrate(url), migrate(url)]);
  const expected = readMigrations().map((migration) => migration.version);
  assert.deepEqual(results.flat().sort((a, b) => a - b), expected, 'each migration was applied by exactly one of them');
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const rows = (await client.query<{ version: number }>('select version from tally_migrations order by version')).rows;
    assert.deepEqual(rows.map((row) => row.version), expected);
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

/** The statements of a migration's "-- Rollback:" note: its lines indented by "--   ". */
function rollbackStatements(sql: string): string {
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
    const applied = async () => (await client.query<{ version: number }>('select version from tally_migrations order by version')).rows.map((row) => row.version);
    for (const migration of readMigrations().reverse()) {
      const statements = rollbackStatements(migration.sql);
      assert.match(statements, new RegExp(`delete from tally_migrations where version = ${migration.version};`), migration.name);
      await client.query('begin');
      await client.query(statements);
      await client.query('commit');
      assert.deepEqual(await applied(), Array.from({ length: migration.version - 1 }, (_, index) => index + 1), `after rolling back ${migration.name}`);
    }
    const tables = await client.query(`select tablename from pg_tables where schemaname = 'public' and tablename <> 'tally_migrations'`);
    assert.deepEqual(tables.rows, [], 'nothing is left but the migrations table');
    assert.deepEqual(await migrate(url), readMigrations().map((migration) => migration.version));
  } finally {
    await client.end();
  }
});
