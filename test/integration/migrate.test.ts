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
  assert.deepEqual(results.flat().sort(), expected, 'each migration was applied by exactly one of them');
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
