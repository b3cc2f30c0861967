/**
 * `npm run bench`: every figure of Tally's hot path in one run (usage over HTTP, with and without
 * spend limits, the usage batch
 * at the SQL level, webhook intake and apply, the server's memory), each beside a baseline
 * measured in the same run on the same database, each the median of several rounds
 * (BENCH_ROUNDS, default 3; HTTP rounds of BENCH_SECONDS, default 5). The server runs in its own process (the real `tally start`);
 * HTTP load comes from autocannon in this one. PostgreSQL is a fresh embedded cluster unless
 * BENCH_DATABASE_URL names a server (a scratch database is created there and dropped after).
 * TALLY_BENCH_QUICK=1 runs every row once, briefly, to check that the bench works: its figures
 * mean nothing.
 */
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { ensureDatabase } from '../src/db/embedded.js';
import { openBenchPostgres } from './scratch-server.js';
import { migrate } from '../src/db/migrate.js';
import { databaseUrlFor } from '../test/helpers/database.js';
import {
  accountCount,
  connectionCount,
  createNaiveSpend,
  hotAccount,
  measureHttp,
  measureNaiveNode,
  measureNaivePgbench,
  median,
  spreadAccount,
  type Figures,
} from './load.js';
import { measureBatchSql, measurePricedBatchSql, pricedSpend } from './batch-sql.js';
import { benchAppKey, startBenchServer } from './server.js';
import { runWebhookBench } from './webhooks.js';

const quick = process.env.TALLY_BENCH_QUICK === '1';
const roundSeconds = quick ? 1 : Number(process.env.BENCH_SECONDS ?? 5);
const roundCount = quick ? 1 : Number(process.env.BENCH_ROUNDS ?? 3);
/** Batches each side sends per scenario and round in the SQL rows (the default of batch-sql.ts unless quick). */
const batchCountPerRound = quick ? 2 : undefined;
const fundedCredits = 1_000_000_000;
/** Each account has a twin with spend limits that the bench never reaches (its spends are 1 credit). */
const limitedTwin = (account: string): string => `limited-${account}`;

/**
 * The example catalog with a free plan (no prices) whose entitlements name the priced meter and
 * which gives 50 credits a day: written to a temporary file for TALLY_PLANS.
 */
function entitledCatalogFile(): string {
  const catalog = JSON.parse(readFileSync('plans.example.json', 'utf8')) as { plans: unknown[] };
  catalog.plans = [
    {
      id: 'bench_free',
      name: 'Free',
      free: true,
      entitlements: { meters: [pricedSpend.meter], features: {} },
      recurring_grants: [{ credits: 50, every: 'day' }],
    },
    ...catalog.plans,
  ];
  const file = join(mkdtempSync(join(tmpdir(), 'tally-bench-plans-')), 'plans.json');
  writeFileSync(file, JSON.stringify(catalog));
  return file;
}

interface Row {
  label: string;
  unit: string;
  target?: string;
  /** The row this one is compared with (its label). */
  baseline?: string;
  figures: Figures[];
}

async function main(): Promise<void> {
  const postgres = await openBenchPostgres('http');
  const { serverUrl } = postgres;
  const name = `tally_bench_${process.pid}`;
  await ensureDatabase(serverUrl, name);
  const url = databaseUrlFor(serverUrl, name);
  const rows = new Map<string, Row>();
  const row = (label: string, unit: string, extra: Partial<Row> = {}): Row => {
    const existing = rows.get(label) ?? { label, unit, figures: [], ...extra };
    rows.set(label, existing);
    return existing;
  };
  let server: Awaited<ReturnType<typeof startBenchServer>> | undefined;
  try {
    await migrate(url);
    await setUp(url);
    server = await startBenchServer(url);
    const usage = (account: () => string) => () =>
      measureHttp({
        url: server!.url,
        apiKey: benchAppKey,
        seconds: roundSeconds,
        path: () => `/v1/accounts/${account()}/usage`,
        body: (key) => `{"amount":1,"idempotency_key":"${key}"}`,
      });
    // The same spend priced: the meter and quantities of the SQL rows, charged with the carry.
    const priced = `"meter":"${pricedSpend.meter}","quantities":${JSON.stringify(pricedSpend.quantities)}`;
    const pricedUsage = (account: () => string) => () =>
      measureHttp({
        url: server!.url,
        apiKey: benchAppKey,
        seconds: roundSeconds,
        path: () => `/v1/accounts/${account()}/usage`,
        body: (key) => `{${priced},"idempotency_key":"${key}"}`,
      });
    const randomAccount = () => spreadAccount(Math.floor(Math.random() * accountCount));
    let rss = 0;
    for (let round = 1; round <= roundCount; round += 1) {
      for (const [scenario, account, hot] of [
        ['one hot account', () => hotAccount, true],
        [`${accountCount.toLocaleString('en')} accounts`, randomAccount, false],
      ] as const) {
        row(`naive spend function, ${scenario} (pg client)`, 'spends/s').figures.push(await measureNaiveNode(url, roundSeconds, account));
        const pgbench = await measureNaivePgbench(url, roundSeconds, hot);
        if (pgbench !== undefined) row(`naive spend function, ${scenario} (pgbench)`, 'spends/s').figures.push(pgbench);
        row(`POST usage over HTTP, ${scenario}`, 'spends/s', {
          target: '≥ 15,000/s, p99 ≤ 50 ms',
          baseline: `naive spend function, ${scenario} (pg client)`,
        }).figures.push(await usage(account)());
        row(`POST usage over HTTP, ${scenario}, spend limits`, 'spends/s', { baseline: `POST usage over HTTP, ${scenario}` }).figures.push(
          await usage(() => limitedTwin(account()))(),
        );
        row(`POST usage over HTTP, ${scenario}, priced`, 'spends/s', {
          target: '≥ 0.8x plain',
          baseline: `POST usage over HTTP, ${scenario}`,
        }).figures.push(await pricedUsage(account)());
        rss = Math.max(rss, server.takePeakRssMiB());
      }
      process.stderr.write(`round ${round}/${roundCount} done\n`);
    }
    row('server peak RSS under the HTTP load above', 'MiB', { target: '≤ 200 MB' }).figures.push({
      perSecond: rss,
      p50: Number.NaN,
      p99: Number.NaN,
    });
    await server.stop();
    server = undefined;
    // The same spends with every account on a free plan that has entitlements (the priced
    // meter among them) and a daily recurring grant: the entitlement check and the recurring
    // grant's probe in every spend, against the rows above (a later server on the same data).
    process.stderr.write('usage over HTTP with entitlements and a daily recurring grant\n');
    server = await startBenchServer(url, { TALLY_PLANS: entitledCatalogFile() });
    for (let round = 1; round <= roundCount; round += 1) {
      for (const [scenario, account] of [
        ['one hot account', () => hotAccount],
        [`${accountCount.toLocaleString('en')} accounts`, randomAccount],
      ] as const) {
        row(`POST usage over HTTP, ${scenario}, entitled plan`, 'spends/s', {
          target: '≥ 0.9x plain',
          baseline: `POST usage over HTTP, ${scenario}`,
        }).figures.push(await usage(account)());
        row(`POST usage over HTTP, ${scenario}, priced, entitled plan`, 'spends/s', {
          target: '≥ 0.9x priced',
          baseline: `POST usage over HTTP, ${scenario}, priced`,
        }).figures.push(await pricedUsage(account)());
      }
    }
    await server.stop();
    server = undefined;
    const none = { p50: Number.NaN, p99: Number.NaN };
    process.stderr.write('tally_usage_batch at the SQL level, before and after migration 0013\n');
    for (const figure of await measureBatchSql(serverUrl, { roundCount, batchCountPerRound })) {
      const scenario = figure.scenario === 'hot' ? 'one hot account' : `${accountCount.toLocaleString('en')} accounts`;
      const before = row(`tally_usage_batch of 256, ${scenario}, before 0013`, 'spends/s');
      before.figures.push(...figure.beforeRounds.map((perSecond) => ({ perSecond, ...none })));
      row(`tally_usage_batch of 256, ${scenario}, set-based`, 'spends/s', {
        target: figure.scenario === 'spread' ? '≥ 40,000/s' : '',
        baseline: before.label,
      }).figures.push(...figure.afterRounds.map((perSecond) => ({ perSecond, ...none })));
    }
    process.stderr.write('tally_usage_batch at the SQL level, before and after migration 0015 (spend limits), accounts without limits\n');
    for (const figure of await measureBatchSql(serverUrl, { roundCount, batchCountPerRound, versionBefore: 14 })) {
      const scenario = figure.scenario === 'hot' ? 'one hot account' : `${accountCount.toLocaleString('en')} accounts`;
      const before = row(`tally_usage_batch of 256, ${scenario}, before 0015`, 'spends/s');
      before.figures.push(...figure.beforeRounds.map((perSecond) => ({ perSecond, ...none })));
      row(`tally_usage_batch of 256, ${scenario}, no limits, now`, 'spends/s', { baseline: before.label }).figures.push(
        ...figure.afterRounds.map((perSecond) => ({ perSecond, ...none })),
      );
    }
    process.stderr.write('tally_usage_batch at the SQL level, before and after migration 0022 (entitlements), a catalog without them\n');
    for (const figure of await measureBatchSql(serverUrl, { roundCount, batchCountPerRound, versionBefore: 21 })) {
      const scenario = figure.scenario === 'hot' ? 'one hot account' : `${accountCount.toLocaleString('en')} accounts`;
      const before = row(`tally_usage_batch of 256, ${scenario}, before 0022`, 'spends/s');
      before.figures.push(...figure.beforeRounds.map((perSecond) => ({ perSecond, ...none })));
      row(`tally_usage_batch of 256, ${scenario}, no entitlements, now`, 'spends/s', { baseline: before.label }).figures.push(
        ...figure.afterRounds.map((perSecond) => ({ perSecond, ...none })),
      );
    }
    process.stderr.write('tally_usage_batch at the SQL level, plain and priced spends on one database\n');
    for (const figure of await measurePricedBatchSql(serverUrl, { roundCount, batchCountPerRound })) {
      const scenario = figure.scenario === 'hot' ? 'one hot account' : `${accountCount.toLocaleString('en')} accounts`;
      const plain = row(`tally_usage_batch of 256, ${scenario}, plain`, 'spends/s');
      plain.figures.push(...figure.plainRounds.map((perSecond) => ({ perSecond, ...none })));
      row(`tally_usage_batch of 256, ${scenario}, priced`, 'spends/s', { target: '≥ 0.8x plain', baseline: plain.label }).figures.push(
        ...figure.pricedRounds.map((perSecond) => ({ perSecond, ...none })),
      );
    }
    process.stderr.write('webhook intake and apply\n');
    process.env.BENCH_DATABASE_URL = serverUrl;
    const webhooks = await runWebhookBench(
      quick ? { rounds: roundCount, intakeDeliveries: 500, applyEvents: 100 } : { rounds: roundCount },
    );
    const [oneInsert] = webhooks.intake;
    for (const line of webhooks.intake) {
      const first = line === oneInsert;
      row(`webhook intake, ${line.label}`, 'events/s', {
        target: first ? '' : '≥ 5,000/s durable',
        baseline: first ? undefined : `webhook intake, ${oneInsert!.label}`,
      }).figures.push(line);
    }
    const [oneLane] = webhooks.apply;
    for (const line of webhooks.apply) {
      const first = line === oneLane;
      row(`webhooks applied (pack purchases), ${line.label}`, 'events/s', {
        target: first ? '' : '≥ 2,000/s',
        baseline: first ? undefined : `webhooks applied (pack purchases), ${oneLane!.label}`,
      }).figures.push({ perSecond: line.perSecond, ...none });
    }
    report([...rows.values()]);
  } finally {
    await server?.stop();
    const admin = new pg.Client({ connectionString: serverUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${name} with (force)`);
    await admin.end();
    await postgres.stop();
  }
}

/**
 * Every account funded through the ledger's own grant function, so balances and grants agree;
 * each with a twin that has spend limits per day and per month (as high as the funding, so
 * never reached: the twins measure what checking and counting limits costs); the baseline's
 * copy beside them.
 */
async function setUp(url: string): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`insert into accounts (id) select 'acct-' || n from generate_series(0, ${accountCount - 1}) n union all select $1`, [
      hotAccount,
    ]);
    await client.query(`insert into accounts (id) select $1 || id from accounts`, [limitedTwin('')]);
    await client.query(
      `select tally_add_grant(id, 'promo', $1, 0, null, 'bench-fund', 'grant', '{}'::jsonb, 'system', null, now()) from accounts`,
      [fundedCredits],
    );
    await client.query(`select tally_set_spend_limits(id, true, $1, true, $1, 'system', null) from accounts where id like $2`, [
      fundedCredits,
      `${limitedTwin('')}%`,
    ]);
    await createNaiveSpend(client, fundedCredits);
    await client.query('vacuum analyze');
  } finally {
    await client.end();
  }
}

function report(rows: Row[]): void {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  if (quick) console.log('\nTALLY_BENCH_QUICK: one short round of each row, to check that the bench runs; these figures mean nothing');
  console.log(
    `\nTally bench: ${cpus().length} cores (${cpu}), ${Math.round(totalmem() / 2 ** 30)} GiB; ${connectionCount} connections; median of ${roundCount} rounds of ${roundSeconds} s\n`,
  );
  const format = (value: number, digits = 0) => (Number.isNaN(value) ? '' : value.toFixed(digits));
  console.log(
    `${'path'.padEnd(58)} ${'figure'.padStart(10)} ${'unit'.padEnd(9)} ${'p50 ms'.padStart(7)} ${'p99 ms'.padStart(7)} ${'ratio'.padStart(7)}  target`,
  );
  for (const row of rows) {
    const figure = median(row.figures.map((f) => f.perSecond));
    const baseline = row.baseline === undefined ? undefined : rows.find((candidate) => candidate.label === row.baseline);
    const ratio = baseline === undefined ? '' : `${(figure / median(baseline.figures.map((f) => f.perSecond))).toFixed(2)}x`;
    console.log(
      `${row.label.padEnd(58)} ${format(figure).padStart(10)} ${row.unit.padEnd(9)} ${format(median(row.figures.map((f) => f.p50)), 1).padStart(7)} ${format(median(row.figures.map((f) => f.p99)), 1).padStart(7)} ${ratio.padStart(7)}  ${row.target ?? ''}`,
    );
  }
  console.log(
    '\nratio: HTTP usage to the naive spend function on the same accounts driven by the same Node client; with spend limits to the same call on accounts without;',
  );
  console.log(
    `priced spends (${pricedSpend.meter} ${JSON.stringify(pricedSpend.quantities)}: 1.25 credits with the carry) to plain spends of 1 credit, over HTTP in the same rounds and in the batch on one database;`,
  );
  console.log(
    'the set-based batch to the batch before 0013; the batch now to the batch before spend limits (0015), on accounts without limits;',
  );
  console.log(
    'group commit to one insert per delivery; the default lanes to one lane. pgbench rows show the average latency in the p50 column.',
  );
}

await main();
