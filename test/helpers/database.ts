import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { Database } from '../../src/db/database.js';

/** A URL for another database on the same server. */
export function databaseUrlFor(serverUrl: string, name: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export interface TestDatabase {
  url: string;
  db: Database;
  close(): Promise<void>;
}

function testServer(): { serverUrl: string; template: string } {
  const serverUrl = process.env.TALLY_TEST_SERVER_URL;
  const template = process.env.TALLY_TEST_TEMPLATE;
  if (serverUrl === undefined || template === undefined) throw new Error('run the tests with `npm test` (it starts PostgreSQL)');
  return { serverUrl, template };
}

/** An empty database (no migrations), dropped with the run. */
export async function createEmptyDatabase(): Promise<string> {
  const { serverUrl, template } = testServer();
  const name = `${template}_empty_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  await admin.query(`create database ${name}`).finally(() => admin.end());
  return databaseUrlFor(serverUrl, name);
}

/** A fresh, migrated database cloned from the run's template; one per test file. */
export async function createTestDatabase(poolSize = 20): Promise<TestDatabase> {
  const { serverUrl, template } = testServer();
  const name = `${template}_${randomBytes(5).toString('hex')}`;
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await admin.query(`create database ${name} template ${template}`);
        break;
      } catch (error) {
        // 55006: the template is briefly in use by a concurrent clone; try again.
        if ((error as { code?: string }).code !== '55006' || attempt > 50) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  } finally {
    await admin.end();
  }
  const url = databaseUrlFor(serverUrl, name);
  // Connection losses are expected in the sick-database tests; what they cause is what is asserted.
  const db = new Database({ url, poolSize, statementTimeoutMilliseconds: 30_000, applicationName: 'tally-test', warn: () => undefined });
  return { url, db, close: () => db.close() };
}

/**
 * A sick database for a while: every `intervalMilliseconds`, for `rounds` rounds, terminates
 * every other connection to the database at `url`. `stop()` waits for the last round and
 * answers how many connections were killed.
 */
export async function startConnectionKiller(url: string, rounds = 15, intervalMilliseconds = 60): Promise<{ stop(): Promise<number> }> {
  const killer = new pg.Client({ connectionString: url, application_name: 'killer' });
  await killer.connect();
  let killed = 0;
  const killing = (async () => {
    for (let round = 0; round < rounds; round += 1) {
      const { rowCount } = await killer.query(
        `select pg_terminate_backend(pid) from pg_stat_activity where datname = current_database() and application_name <> 'killer'`,
      );
      killed += rowCount ?? 0;
      await new Promise((resolve) => setTimeout(resolve, intervalMilliseconds));
    }
  })();
  return {
    async stop() {
      await killing;
      await killer.end();
      return killed;
    },
  };
}
