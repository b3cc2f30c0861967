/**
 * `npm test`: starts a real PostgreSQL (the embedded one, unless TEST_DATABASE_URL names a
 * server), builds a migrated template database, and runs every test file with Node's test
 * runner. Each test file clones the template into a database of its own.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import pg from 'pg';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../src/db/embedded.js';
import { migrate } from '../src/db/migrate.js';
import { databaseUrlFor } from './helpers/database.js';

function testFiles(directory: string): string[] {
  return readdirSync(directory).flatMap((name) => {
    const path = join(directory, name);
    if (statSync(path).isDirectory()) return testFiles(path);
    return name.endsWith('.test.ts') ? [path] : [];
  });
}

const filters = process.argv.slice(2);
const files = testFiles('test')
  .filter((file) => filters.length === 0 || filters.some((filter) => file.includes(filter)))
  .sort();
if (files.length === 0) throw new Error(`no test files match ${filters.join(' ')}`);

// The end-to-end tests start Tally as a real process (bin/tally.js, npm start), which runs the
// compiled dist/, as a production install does: build it first, so that they never run a build
// older than the sources. Every other test runs the sources through tsx.
if (files.some((file) => file.startsWith(join('test', 'e2e')))) {
  console.log('# building dist/ for the end-to-end tests');
  const built = spawnSync(process.execPath, ['scripts/build.js'], { stdio: 'inherit' });
  if (built.status !== 0) throw new Error(`npm run build failed (exit ${built.status})`);
}

let embedded: EmbeddedDatabase | undefined;
let scratch: string | undefined;
let serverUrl = process.env.TEST_DATABASE_URL;
if (serverUrl === undefined || serverUrl === '') {
  scratch = mkdtempSync(join(tmpdir(), 'tally-test-'));
  embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
  serverUrl = embedded.url;
  // The server runs in a session of its own (a Ctrl-C does not reach it), so an interrupted
  // run stops it here; the test files, in this terminal's process group, stop by themselves.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      void embedded?.stop().finally(() => {
        if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
        process.exit(signal === 'SIGINT' ? 130 : 143);
      });
    });
  }
  console.log('# test database: embedded PostgreSQL');
} else {
  console.log(`# test database: ${new URL(serverUrl).host} (TEST_DATABASE_URL)`);
}

const template = `tally_template_${process.pid}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`create database ${template}`);
await migrate(databaseUrlFor(serverUrl, template));

// Test files run two at a time when the server has room for both. The busiest files hold about
// 75 connections each (parallel clients, plus a second "process"), so a server with fewer than
// 200 (PostgreSQL's default is 100) runs them one at a time rather than refusing connections.
const maxConnections = Number((await admin.query<{ max_connections: string }>('show max_connections')).rows[0]?.max_connections ?? 100);
const concurrency = maxConnections >= 200 ? 2 : 1;
console.log(`# max_connections ${maxConnections}: ${concurrency} test file(s) at a time`);

const exitCode = await new Promise<number>((resolve) => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', '--test', `--test-concurrency=${concurrency}`, ...files.map((file) => relative('.', file))],
    {
      stdio: 'inherit',
      env: { ...process.env, TALLY_TEST_SERVER_URL: serverUrl, TALLY_TEST_TEMPLATE: template },
    },
  );
  child.on('exit', (code, signal) => resolve(code ?? (signal === null ? 1 : 128)));
});

const leftovers = await admin.query<{ datname: string }>('select datname from pg_database where datname like $1', [`${template}%`]);
for (const row of leftovers.rows) await admin.query(`drop database if exists ${pg.escapeIdentifier(row.datname)} with (force)`);
await admin.end();
await embedded?.stop();
if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
process.exit(exitCode);
