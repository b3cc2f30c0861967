/**
 * `npm run bench:reconcile`: how long a reconciliation takes on a large ledger. Fills a fresh
 * database with BENCH_ENTRIES entries (default 10,000,000) over 1,000 entries per account, each
 * account with one grant that its entries spend (so the ledger is consistent and the run finds
 * nothing), written with generate_series, then times one run with every check. Prints the fill
 * time, the run time and entries per second. Runs on the embedded PostgreSQL, or on
 * BENCH_DATABASE_URL's server (a database of its own, dropped at the end).
 */
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { parseCatalog } from '../src/billing/catalog.js';
import { Database } from '../src/db/database.js';
import { ensureDatabase } from '../src/db/embedded.js';
import { openBenchPostgres } from './scratch-server.js';
import { migrate } from '../src/db/migrate.js';
import { reconcile } from '../src/ops/reconcile.js';
import { databaseUrlFor } from '../test/helpers/database.js';

const entryCount = Number(process.env.BENCH_ENTRIES ?? 10_000_000);
const entriesPerAccount = 1000;

async function fill(url: string): Promise<void> {
  const accountCount = Math.max(1, Math.floor(entryCount / entriesPerAccount));
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    // A bulk load, not a benchmark of the write path: no synchronous commit, and each account
    // gets its grant, its grant entry and the usage entries that spend all but one credit.
    await client.query('set synchronous_commit = off');
    await client.query(`insert into accounts (id, available) select 'bench-' || a, 1 from generate_series(1, $1) a`, [accountCount]);
    await client.query(
      `insert into grants (account_id, source, amount, remaining, grant_key) select 'bench-' || a, 'promo', $2, 1, 'bench-grant' from generate_series(1, $1) a`,
      [accountCount, entriesPerAccount],
    );
    await client.query(
      `insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key, actor, reason)
       select g.account_id,
              case when n = 1 then 'grant' else 'usage' end,
              case when n = 1 then $1 else -1 end,
              $1 - (n - 1),
              array[g.id], array[case when n = 1 then $1 else -1 end],
              'bench-' || n, 'admin', 'bench'
       from grants g cross join generate_series(1, $1) n`,
      [entriesPerAccount],
    );
    await client.query('vacuum analyze accounts, grants, entries');
  } finally {
    await client.end();
  }
}

async function main(): Promise<void> {
  const postgres = await openBenchPostgres('reconcile');
  const { serverUrl } = postgres;
  const name = `tally_bench_reconcile_${process.pid}`;
  await ensureDatabase(serverUrl, name);
  const url = databaseUrlFor(serverUrl, name);
  try {
    await migrate(url);
    const filling = performance.now();
    await fill(url);
    const fillSeconds = (performance.now() - filling) / 1000;
    // The pool's statement timeout of a server (10 s): the run must not depend on it.
    const db = new Database({ url, poolSize: 2, statementTimeoutMilliseconds: 10_000 });
    try {
      const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
      const running = performance.now();
      const report = await reconcile(db, { trigger: 'cli', stripe: false, gateway: undefined, catalog });
      const runSeconds = (performance.now() - running) / 1000;
      if (report.finding_count !== 0)
        throw new Error(`the bench ledger should be consistent: ${JSON.stringify(report.findings.slice(0, 3))}`);
      console.log(`entries ${report.summary.entries}, accounts ${report.summary.accounts}`);
      console.log(
        `fill ${fillSeconds.toFixed(1)} s; reconciliation ${runSeconds.toFixed(1)} s (${Math.round(report.summary.entries / runSeconds)} entries/s)`,
      );
    } finally {
      await db.close();
    }
  } finally {
    const admin = new pg.Client({ connectionString: serverUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`);
    await admin.end();
    await postgres.stop();
  }
}

await main();
