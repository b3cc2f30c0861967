import { readdirSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import type { Database } from './database.js';

/**
 * Numbered SQL migrations (`migrations/0001-name.sql`), each applied in its own transaction and
 * recorded in `tally_migrations`. A session advisory lock makes two processes that start at
 * once take turns: the second finds the work done. Every file must say how to roll it back.
 */
export const migrationsDirectory = fileURLToPath(new URL('../../migrations/', import.meta.url));

// An arbitrary constant: the advisory lock key that all Tally processes agree on.
const migrationLockKey = 7_316_122_451;

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

export function readMigrations(directory = migrationsDirectory): Migration[] {
  const migrations = readdirSync(directory)
    .filter((file) => /^\d{4}-[a-z0-9-]+\.sql$/.test(file))
    .sort()
    .map((file) => {
      const sql = readFileSync(`${directory}/${file}`, 'utf8');
      if (!/^-- Rollback:/m.test(sql)) throw new Error(`migration ${file} does not say how to roll it back (a "-- Rollback:" note)`);
      return { version: Number(file.slice(0, 4)), name: file.replace(/\.sql$/, ''), sql };
    });
  migrations.forEach((migration, index) => {
    if (migration.version !== index + 1) throw new Error(`migration ${migration.name} is out of sequence: expected number ${index + 1}`);
  });
  return migrations;
}

const createTable = `create table if not exists tally_migrations (
  version integer primary key, name text not null, applied_at timestamptz not null default now())`;

export interface MigrateOptions {
  /** Apply migrations up to this version only (benchmarks compare a function before and after a migration). */
  versionMax?: number;
}

export async function migrate(
  databaseUrl: string,
  log: (line: string) => void = () => undefined,
  options: MigrateOptions = {},
): Promise<number[]> {
  const migrations = readMigrations().filter((migration) => options.versionMax === undefined || migration.version <= options.versionMax);
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'tally-migrate' });
  await client.connect();
  const applied: number[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [migrationLockKey]);
    await client.query(createTable);
    const done = new Set((await client.query<{ version: number }>('select version from tally_migrations')).rows.map((row) => row.version));
    for (const migration of migrations) {
      if (done.has(migration.version)) continue;
      await applyOne(client, migration);
      applied.push(migration.version);
      log(`applied migration ${migration.name}`);
    }
  } finally {
    await client.query('select pg_advisory_unlock($1)', [migrationLockKey]).finally(() => client.end());
  }
  return applied;
}

async function applyOne(client: pg.Client, migration: Migration): Promise<void> {
  await client.query('begin');
  try {
    await client.query(migration.sql);
    await client.query('insert into tally_migrations (version, name) values ($1, $2)', [migration.version, migration.name]);
    await client.query('commit');
  } catch (error) {
    await client.query('rollback');
    throw new Error(`migration ${migration.name} failed: ${(error as Error).message}`, { cause: error });
  }
}

/** Migrations present in files but not applied to the database (for /readyz). */
export async function pendingMigrations(query: (text: string) => Promise<{ rows: { version: number }[] }>): Promise<number[]> {
  const known = readMigrations().map((migration) => migration.version);
  const result = await query('select version from tally_migrations');
  const done = new Set(result.rows.map((row) => row.version));
  return known.filter((version) => !done.has(version));
}

/** The database is not at this Tally's schema: never migrated, or migrations are pending. */
export class SchemaNotCurrentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SchemaNotCurrentError';
  }
}

/**
 * Refuses a database whose schema is not this Tally's: never migrated, or older than its
 * migrations. Only `tally start` and `tally migrate` migrate; every other command checks with
 * this instead, so that reading a database never changes it, and an old one is named as such
 * rather than failing on a missing column.
 */
export async function assertSchemaCurrent(db: Pick<Database, 'query'>): Promise<void> {
  const { rows } = await db.query<{ migrated: boolean }>(`select to_regclass('tally_migrations') is not null as migrated`);
  if (rows[0]?.migrated !== true) {
    throw new SchemaNotCurrentError('the database has no Tally schema (it was never migrated): run `tally migrate` first');
  }
  const pending = new Set(await pendingMigrations((text) => db.query<{ version: number }>(text)));
  if (pending.size === 0) return;
  const names = readMigrations()
    .filter((migration) => pending.has(migration.version))
    .map((migration) => migration.name);
  throw new SchemaNotCurrentError(
    `the database is older than this Tally: ${names.length} migration(s) not applied (${names.join(', ')}): run \`tally migrate\` first`,
  );
}
