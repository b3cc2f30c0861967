/**
 * `npm run bench`: usage throughput with 64 concurrent clients, on one hot account and spread
 * over 10,000 accounts, for Tally (one SQL function call per spend, and the same through HTTP)
 * against a baseline measured in the same run on the same database: one transaction per spend
 * made of SELECT ... FOR UPDATE, UPDATE, INSERT. Variants: `tally` is one SQL function call
 * per spend; `tally batched` goes through the group-commit batcher the HTTP route uses;
 * `tally http` is the whole path, HTTP client and server sharing this process's cores. Prints spends per second, p50 and p99 latency,
 * and ratios to the baseline; each figure is the median of several rounds.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { pino } from 'pino';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent, request } from 'node:http';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { Database } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedDatabase, type EmbeddedDatabase } from '../src/db/embedded.js';
import { migrate } from '../src/db/migrate.js';
import { assemble } from '../src/app.js';
import { parseCatalog } from '../src/billing/catalog.js';
import { usageBatchesConcurrentMax } from '../src/http/server.js';
import { UsageBatcher } from '../src/ledger/usage-batcher.js';
import { databaseUrlFor } from '../test/helpers/database.js';

const clientCount = 64;
const accountCount = 10_000;
const roundSeconds = Number(process.env.BENCH_SECONDS ?? 4);
const roundCount = Number(process.env.BENCH_ROUNDS ?? 3);
const appKey = 'bench-app-key-0123456789';

interface Figures {
  perSecond: number;
  p50: number;
  p99: number;
}

async function measure(spend: (client: number, sequence: number) => Promise<void>): Promise<Figures> {
  const latencies: number[] = [];
  const stopAt = performance.now() + roundSeconds * 1000;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: clientCount }, async (_, client) => {
      for (let sequence = 0; performance.now() < stopAt; sequence += 1) {
        const begin = performance.now();
        await spend(client, sequence);
        latencies.push(performance.now() - begin);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (quantile: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * quantile))] ?? 0;
  return { perSecond: latencies.length / seconds, p50: at(0.5), p99: at(0.99) };
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;

async function main(): Promise<void> {
  let embedded: EmbeddedDatabase | undefined;
  let scratch: string | undefined;
  let serverUrl = process.env.BENCH_DATABASE_URL;
  if (serverUrl === undefined) {
    scratch = mkdtempSync(join(tmpdir(), 'tally-bench-'));
    embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
    serverUrl = embedded.url;
  }
  const name = `tally_bench_${process.pid}`;
  await ensureDatabase(serverUrl, name);
  const url = databaseUrlFor(serverUrl, name);
  await migrate(url);
  const db = new Database({ url, poolSize: clientCount, statementTimeoutMilliseconds: 60_000 });
  const { app, ledger, close } = await assemble({
    db,
    catalog: parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8'))),
    keys: { apiKey: appKey, adminKey: `${appKey}-admin` },
    logger: pino({ level: 'silent' }),
    logLevel: 'silent',
    version: 'bench',
    webhookSecrets: [],
    sweepIntervalSeconds: 60,
  });
  const address = await app.listen({ port: 0, host: '127.0.0.1' });
  const batcher = new UsageBatcher(ledger, usageBatchesConcurrentMax);
  const agent = new Agent({ keepAlive: true, maxSockets: clientCount });

  try {
    await setUp(db);
    const results: Record<string, Figures[]> = {};
    const record = (label: string, figures: Figures) => (results[label] ??= []).push(figures);
    let run = 0;
    for (let round = 1; round <= roundCount; round += 1) {
      for (const scenario of ['hot', 'spread'] as const) {
        const account = (client: number, sequence: number) => (scenario === 'hot' ? 'hot' : `acct-${(client * 7919 + sequence * 104_729) % accountCount}`);
        run += 1;
        const tag = `${run}`;
        record(`${scenario} baseline`, await measure((client, sequence) => baselineSpend(db, account(client, sequence))));
        record(`${scenario} tally`, await measure(async (client, sequence) => {
          const outcome = await ledger.usage(account(client, sequence), { amount: 1, idempotency_key: `b${tag}-${client}-${sequence}` }, 'app');
          if (outcome.status !== 200) throw new Error(`spend refused: ${JSON.stringify(outcome)}`);
        }));
        record(`${scenario} tally batched`, await measure(async (client, sequence) => {
          const outcome = await batcher.spend(account(client, sequence), { amount: 1, idempotency_key: `g${tag}-${client}-${sequence}` }, 'app');
          if (outcome.status !== 200) throw new Error(`spend refused: ${JSON.stringify(outcome)}`);
        }));
        record(`${scenario} tally http`, await measure(async (client, sequence) => {
          const status = await post(agent, `${address}/v1/accounts/${account(client, sequence)}/usage`, JSON.stringify({ amount: 1, idempotency_key: `h${tag}-${client}-${sequence}` }));
          if (status !== 200) throw new Error(`spend refused: ${status}`);
        }));
      }
      process.stderr.write(`round ${round}/${roundCount} done\n`);
    }
    report(results);
  } finally {
    await close();
    await db.close();
    const admin = new pg.Client({ connectionString: serverUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
    await embedded?.stop();
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
  }
}

async function setUp(db: Database): Promise<void> {
  const credits = 1_000_000_000;
  await db.query(`insert into accounts (id) select 'acct-' || n from generate_series(0, ${accountCount - 1}) n union all select 'hot'`);
  // Fund every account through the ledger's own grant function so balances and grants agree.
  await db.query(`select tally_add_grant(id, 'promo', ${credits}, 0, null, 'bench-fund', 'grant', '{}'::jsonb, 'system', null, now()) from accounts`);
  await db.query(`create table bench_baseline_accounts (id text primary key, balance bigint not null check (balance >= 0))`);
  await db.query(`create table bench_baseline_entries (id bigint generated always as identity primary key, account_id text not null, amount bigint not null, created_at timestamptz not null default now())`);
  await db.query(`insert into bench_baseline_accounts select id, ${credits} from accounts`);
  await db.query('vacuum analyze');
}

/** A keep-alive HTTP POST with the app key; answers the status. */
function post(agent: Agent, url: string, body: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const outgoing = request(url, { method: 'POST', agent, headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode ?? 0));
    });
    outgoing.on('error', reject);
    outgoing.end(body);
  });
}

/** The baseline: the read-lock-modify-write transaction most hand-written ledgers use. */
async function baselineSpend(db: Database, account: string): Promise<void> {
  await db.withTransaction(async (client) => {
    const { rows } = await client.query<{ balance: number }>('select balance from bench_baseline_accounts where id = $1 for update', [account]);
    if ((rows[0]?.balance ?? 0) < 1) throw new Error('baseline overdraft');
    await client.query('update bench_baseline_accounts set balance = balance - 1 where id = $1', [account]);
    await client.query('insert into bench_baseline_entries (account_id, amount) values ($1, -1)', [account]);
  });
}

function report(results: Record<string, Figures[]>): void {
  const line = (label: string) => {
    const figures = results[label] ?? [];
    return { label, perSecond: median(figures.map((f) => f.perSecond)), p50: median(figures.map((f) => f.p50)), p99: median(figures.map((f) => f.p99)) };
  };
  console.log(`\nusage throughput, ${clientCount} concurrent clients, median of ${roundCount} rounds of ${roundSeconds}s\n`);
  console.log('scenario              spends/s    p50 ms    p99 ms   ratio to baseline');
  for (const scenario of ['hot', 'spread']) {
    const baseline = line(`${scenario} baseline`);
    for (const label of [`${scenario} baseline`, `${scenario} tally`, `${scenario} tally batched`, `${scenario} tally http`]) {
      const figures = line(label);
      console.log(
        `${label.padEnd(20)} ${figures.perSecond.toFixed(0).padStart(9)} ${figures.p50.toFixed(2).padStart(9)} ${figures.p99.toFixed(2).padStart(9)}   ${(figures.perSecond / baseline.perSecond).toFixed(2)}x`,
      );
    }
  }
}

await main();
