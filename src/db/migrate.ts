import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { packageRoot } from '../package-root.js';

/**
 * Numbered SQL migrations (`migrations/0001-name.sql`), each applied in its own transaction and
 * recorded in `tally_migrations`, hold what cannot be replayed: tables, data moves, drops. Every
 * file must say how to roll it back. SQL functions are code, not history: each area's functions
 * live in one file of `db/functions/` (CREATE OR REPLACE), applied after the migrations whenever
 * the file's checksum changed (or a migration ran, since a migration may drop what a file
 * defines). A session advisory lock makes two processes that start at once take turns: the
 * second finds the work done.
 */
export const migrationsDirectory = join(packageRoot, 'migrations');
export const functionsDirectory = join(packageRoot, 'db', 'functions');

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
      const sql = readFileSync(join(directory, file), 'utf8');
      if (!/^-- Rollback:/m.test(sql)) throw new Error(`migration ${file} does not say how to roll it back (a "-- Rollback:" note)`);
      return { version: Number(file.slice(0, 4)), name: file.replace(/\.sql$/, ''), sql };
    });
  migrations.forEach((migration, index) => {
    if (migration.version !== index + 1) throw new Error(`migration ${migration.name} is out of sequence: expected number ${index + 1}`);
  });
  return migrations;
}

export interface FunctionFile {
  name: string;
  sql: string;
  checksum: string;
}

export function readFunctionFiles(directory = functionsDirectory): FunctionFile[] {
  if (!existsSync(directory)) return [];
  return readdirSync(directory)
    .filter((file) => /^\d{2}-[a-z0-9-]+\.sql$/.test(file))
    .sort()
    .map((file) => {
      const sql = readFileSync(join(directory, file), 'utf8');
      return { name: file, sql, checksum: createHash('sha256').update(sql).digest('hex') };
    });
}

const createTables = `create table if not exists tally_migrations (
  version integer primary key, name text not null, applied_at timestamptz not null default now());
create table if not exists tally_function_files (
  name text primary key, checksum text not null, applied_at timestamptz not null default now())`;

export interface MigrateOptions {
  /**
   * Apply migrations up to this version only, with the functions as those migrations left them
   * (no function files): tests of a migration's rollback note start from the schema it found.
   */
  versionMax?: number;
  /** Where the numbered migrations are (the bench migrates a copy taken from an older git revision). */
  migrationsDirectory?: string;
  /** Where the function files are; a folder that does not exist means none (revisions before db/functions/). */
  functionsDirectory?: string;
}

export async function migrate(
  databaseUrl: string,
  log: (line: string) => void = () => undefined,
  options: MigrateOptions = {},
): Promise<number[]> {
  const migrations = readMigrations(options.migrationsDirectory).filter(
    (migration) => options.versionMax === undefined || migration.version <= options.versionMax,
  );
  const functionFiles = options.versionMax === undefined ? readFunctionFiles(options.functionsDirectory) : [];
  const client = new pg.Client({ connectionString: databaseUrl, application_name: 'tally-migrate' });
  await client.connect();
  const applied: number[] = [];
  try {
    await client.query('select pg_advisory_lock($1)', [migrationLockKey]);
    await client.query(createTables);
    const done = new Set((await client.query<{ version: number }>('select version from tally_migrations')).rows.map((row) => row.version));
    for (const migration of migrations) {
      if (done.has(migration.version)) continue;
      await applyOne(client, migration);
      applied.push(migration.version);
      log(`applied migration ${migration.name}`);
    }
    for (const name of await applyFunctionFiles(client, functionFiles, applied.length > 0)) log(`applied functions ${name}`);
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

/**
 * Applies the function files whose checksum differs from the one recorded (all of them after a
 * migration ran), in one transaction, so a process never sees half of a release's functions.
 * Function bodies are checked when they run, not when they are created: a file may call a
 * function that a later file defines.
 */
async function applyFunctionFiles(client: pg.Client, files: FunctionFile[], force: boolean): Promise<string[]> {
  const recorded = new Map(
    (await client.query<{ name: string; checksum: string }>('select name, checksum from tally_function_files')).rows.map((row) => [
      row.name,
      row.checksum,
    ]),
  );
  const changed = files.filter((file) => force || recorded.get(file.name) !== file.checksum);
  if (changed.length === 0) return [];
  await client.query('begin');
  try {
    await client.query('set local check_function_bodies = off');
    for (const file of changed) {
      await client.query(file.sql);
      await client.query(
        `insert into tally_function_files (name, checksum) values ($1, $2)
         on conflict (name) do update set checksum = excluded.checksum, applied_at = now()`,
        [file.name, file.checksum],
      );
    }
    await client.query('commit');
  } catch (error) {
    await client.query('rollback');
    throw new Error(`function files failed: ${(error as Error).message}`, { cause: error });
  }
  return changed.map((file) => file.name);
}

/** Migrations present in files but not applied to the database (for /readyz). */
export async function pendingMigrations(query: (text: string) => Promise<{ rows: { version: number }[] }>): Promise<number[]> {
  const known = readMigrations().map((migration) => migration.version);
  const result = await query('select version from tally_migrations');
  const done = new Set(result.rows.map((row) => row.version));
  return known.filter((version) => !done.has(version));
}
