/**
 * `npx tsx bench/batch-sql.ts`: the usage batch at the SQL level, before and after migration
 * 0013 (set-based `tally_usage_batch`, request keys per account), in one run on one server.
 * Two databases are made on the server: one migrated up to 0012 (the per-event batch, every
 * key in request_keys), one migrated to the newest; both hold the same 10,000 funded accounts
 * and one hot account, the same request keys of holds, and one unmeasured round (then fresh
 * statistics) behind them. Each round sends the same number of batches of 256 spends (unique keys,
 * arguments built before the clock starts) to each side over a few connections, spread over
 * the 10,000 accounts and then all on the hot account, the sides taking turns going first.
 * Prints spends per second (median of the rounds, and their range), the median batch time,
 * and the ratio after / before. Ratios are steadier than the figures on a shared machine; the
 * steadiest is the CPU time PostgreSQL's backends spent per spend (read from
 * /proc/PID/schedstat when the server runs on this machine), which waiting for a core on a busy
 * machine does not inflate as it does wall time.
 *
 * The server is TEST_DATABASE_URL or BENCH_DATABASE_URL when set, else an embedded PostgreSQL.
 * `measureBatchSql(serverUrl)` is the same measurement for another bench script to call: it
 * creates its two databases on that server and drops them when done.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pathToFileURL } from 'node:url';
import pg from 'pg';
import { ensureDatabase, startEmbeddedDatabase, type EmbeddedDatabase } from '../src/db/embedded.js';
import { parseCatalog } from '../src/billing/catalog.js';
import { migrate } from '../src/db/migrate.js';
import { payloadHash } from '../src/ledger/payload-hash.js';
import { databaseUrlFor } from '../test/helpers/database.js';

/** The last migration before the set-based batch: the default "before" side. */
const setBasedVersionBefore = 12;

/**
 * The migrations and function files of the git revision just before migration `versionBefore + 1`
 * was added, in a scratch folder: the "before" side runs the SQL that release had, read from
 * history rather than from copies kept in the migrations. Needs the repository's history.
 */
function sqlAtRevisionBefore(versionBefore: number): { migrationsDirectory: string; functionsDirectory: string; remove(): void } {
  const next = String(versionBefore + 1).padStart(4, '0');
  const git = (...args: string[]) => execFileSync('git', args, { encoding: 'utf8' }).trim();
  const added = git('log', '--diff-filter=A', '--format=%H', '--', `migrations/${next}-*.sql`).split('\n').at(-1);
  if (added === undefined || added === '') throw new Error(`bench: no commit adds migration ${next} (the bench needs the git history)`);
  const folder = mkdtempSync(join(tmpdir(), `tally-sql-before-${next}-`));
  const paths = ['migrations', ...(git('ls-tree', '-d', '--name-only', `${added}^`, 'db') === '' ? [] : ['db'])];
  execFileSync('sh', ['-c', `git archive ${added}^ ${paths.join(' ')} | tar -x -C ${folder}`]);
  return {
    migrationsDirectory: join(folder, 'migrations'),
    functionsDirectory: join(folder, 'db', 'functions'),
    remove: () => rmSync(folder, { recursive: true, force: true }),
  };
}

export interface BatchSqlOptions {
  roundCount?: number;
  /** Batches each side sends per scenario and round. */
  batchCountPerRound?: number;
  batchSize?: number;
  /** Connections sending batches at once per side (the HTTP server writes 4 batches at once). */
  connectionCount?: number;
  accountCount?: number;
  /** The migration the "before" side stops at (default 12, the batch before 0013; 14 compares with the batch before spend limits). */
  versionBefore?: number;
  log?: (line: string) => void;
}

export interface BatchSqlFigure {
  scenario: 'spread' | 'hot';
  /** Median spends per second of the rounds, before 0013 and after. */
  beforePerSecond: number;
  afterPerSecond: number;
  /** afterPerSecond / beforePerSecond. */
  ratio: number;
  beforeRounds: number[];
  afterRounds: number[];
  /** Median milliseconds per batch, all rounds together. */
  beforeBatchMilliseconds: number;
  afterBatchMilliseconds: number;
  /** Median CPU microseconds the backends spent per spend; null when the server is not on this machine. */
  beforeCpuMicroseconds: number | null;
  afterCpuMicroseconds: number | null;
}

type Side = 'before' | 'after';
/** How a batch goes to SQL: as JSON (before 0013), as arrays, or as arrays with meters and quantities. */
type CallForm = 'json' | 'arrays' | 'priced';

interface Event {
  account_id: string;
  amount: number;
  idempotency_key: string;
  payload_hash: string;
  reference: Record<string, unknown>;
  actor: 'app';
  /** A priced spend's meter and quantities (its amount is 0). */
  meter?: string;
  quantities?: Record<string, number>;
}

/**
 * The priced spend of the priced rows: 2000 input and 1000 output tokens of gpt-5 at the example
 * catalog's standard card cost 1.25 credits, so spends charge 1 or 2 credits and the carry runs
 * through 0.25, 0.5, 0.75 and 0 (a plain spend charges 1).
 */
export const pricedSpend = { meter: 'openai/gpt-5', quantities: { input_tokens: 2000, output_tokens: 1000 } } as const;

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;

/** A small deterministic generator, so that every run spreads its spends the same way. */
function randomIntegers(seed: number): (below: number) => number {
  let state = seed >>> 0;
  return (below) => {
    state = (Math.imul(state, 1_664_525) + 1_013_904_223) >>> 0;
    return state % below;
  };
}

/**
 * A pool whose idle connections may be cut when its database is dropped: pool.end() resolves
 * before every connection has closed, and `drop database ... with (force)` then terminates the
 * ones still closing, which a pool without an error listener would throw out of the process.
 */
function quietWhenDropped(pool: pg.Pool): pg.Pool {
  pool.on('error', () => undefined);
  return pool;
}

/** The process ids of the pool's connections, all opened now and kept open (the pool never lets them idle out). */
async function backendPids(pool: pg.Pool, connectionCount: number): Promise<number[]> {
  const clients = await Promise.all(Array.from({ length: connectionCount }, () => pool.connect()));
  try {
    return await Promise.all(
      clients.map(async (client) => (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid),
    );
  } finally {
    for (const client of clients) client.release();
  }
}

/** Nanoseconds these processes have run on a CPU, or null when they are not on this machine. */
function cpuNanoseconds(pids: number[]): number | null {
  try {
    return pids.reduce((sum, pid) => sum + Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]), 0);
  } catch (error) {
    // Another machine's server (or no /proc): the figure is left out, not guessed.
    if (['ENOENT', 'EACCES'].includes((error as { code?: string }).code ?? '')) return null;
    throw error;
  }
}

/** The form a side of the migration comparison calls: before 0013 the batch took its events as JSON; from 0013 both sides take arrays. */
const migrationForm = (side: Side, versionBefore: number): CallForm => (side === 'before' && versionBefore < 13 ? 'json' : 'arrays');

/** The arguments of one call, as the batch function takes them in this form (as the ledger sends them). */
function callOf(form: CallForm, events: Event[]): { text: string; values: unknown[] } {
  if (form === 'json') return { text: 'select tally_usage_batch($1::jsonb, null) as result', values: [JSON.stringify(events)] };
  const values = [
    events.map((event) => event.account_id),
    events.map((event) => event.amount),
    events.map((event) => event.idempotency_key),
    events.map((event) => event.payload_hash),
    events.map((event) => event.reference),
    events.map((event) => event.actor),
  ];
  if (form === 'arrays')
    return {
      text: 'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], null) as result',
      values,
    };
  return {
    text: 'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], null, $7::text[], $8::jsonb[]) as result',
    values: [
      ...values,
      events.map((event) => event.meter ?? null),
      events.map((event) => (event.quantities === undefined ? null : JSON.stringify(event.quantities))),
    ],
  };
}

async function setUp(url: string, accountCount: number): Promise<void> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query(`insert into accounts (id) select 'acct-' || n from generate_series(0, $1::int - 1) n union all select 'hot'`, [
      accountCount,
    ]);
    // Through the ledger's own grant function, so that balances, grants and entries agree: a
    // month of subscription credits (spent first) and a never-expiring pack behind it.
    await client.query(
      `select tally_add_grant(id, 'subscription', 1000000000000, 0, now() + interval '30 days', 'bench-month', 'grant', '{}'::jsonb, 'system', null, now()) from accounts`,
    );
    await client.query(
      `select tally_add_grant(id, 'purchase', 1000, 0, null, 'bench-pack', 'grant', '{}'::jsonb, 'system', null, now()) from accounts`,
    );
    // Request keys both versions keep (first answers of holds), five per account, so that key
    // lookups meet a table of a realistic size on both sides.
    await client.query(
      `insert into request_keys (key, account_id, operation, payload_hash, status_code, response)
       select 'hold-' || n, 'acct-' || (n % $1::int), 'hold', 'h', 201, '{}'::jsonb from generate_series(1, $1::int * 5) n`,
      [accountCount],
    );
    await client.query('vacuum analyze');
  } finally {
    await client.end();
  }
}

const plainHash = payloadHash({ amount: 1 });
const pricedHash = payloadHash(pricedSpend);

/** Batches of one scenario under keys of their own: plain spends of 1 credit, or the priced spend. */
function batchesOf(accounts: string[][], label: string, priced = false): Event[][] {
  return accounts.map((batch, batchIndex) =>
    batch.map(
      (accountId, index): Event => ({
        account_id: accountId,
        amount: priced ? 0 : 1,
        idempotency_key: `${label}-${batchIndex}-${index}`,
        payload_hash: priced ? pricedHash : plainHash,
        reference: {},
        actor: 'app',
        ...(priced ? { meter: pricedSpend.meter, quantities: pricedSpend.quantities } : {}),
      }),
    ),
  );
}

/**
 * A round of each scenario that is not measured, then fresh statistics: the tables a side
 * writes (entries, and request_keys before 0013) have rows and statistics before the measured
 * connections plan their statements, as in a database in use. Without it, on a new database,
 * the old batch's cost per spend grew with every batch a connection sent (cause not found).
 */
async function warmUp(url: string, name: string, form: CallForm, batches: Event[][], connectionCount: number): Promise<void> {
  const pool = quietWhenDropped(new pg.Pool({ connectionString: url, max: connectionCount }));
  try {
    await send(pool, name, form, batches, connectionCount);
    await pool.query('vacuum analyze');
  } finally {
    await pool.end();
  }
}

interface Measured {
  perSecond: number;
  batchMilliseconds: number[];
  cpuMicrosecondsPerSpend: number | null;
}

/** Sends `batches` over `pool`, `connectionCount` at a time; answers spends/s, each batch's milliseconds and the backends' CPU per spend. */
async function send(pool: pg.Pool, name: string, form: CallForm, batches: Event[][], connectionCount: number): Promise<Measured> {
  const calls = batches.map((events) => callOf(form, events));
  const spendCount = batches.reduce((sum, events) => sum + events.length, 0);
  const pids = await backendPids(pool, connectionCount);
  const batchMilliseconds: number[] = [];
  let next = 0;
  const cpuBefore = cpuNanoseconds(pids);
  const started = performance.now();
  await Promise.all(
    Array.from({ length: connectionCount }, async () => {
      for (let index = next++; index < calls.length; index = next++) {
        const call = calls[index]!;
        const begin = performance.now();
        const { rows } = await pool.query<{ result: { status: number }[] }>(call.text, call.values);
        batchMilliseconds.push(performance.now() - begin);
        const refused = rows[0]?.result.find((outcome) => outcome.status !== 200);
        if (refused !== undefined) throw new Error(`${name}: a spend was refused: ${JSON.stringify(refused)}`);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  const cpuAfter = cpuNanoseconds(pids);
  const cpuMicrosecondsPerSpend = cpuBefore === null || cpuAfter === null ? null : (cpuAfter - cpuBefore) / 1000 / spendCount;
  return { perSecond: spendCount / seconds, batchMilliseconds, cpuMicrosecondsPerSpend };
}

/** One side of a comparison: a pool on its database and the form its batches go in. */
interface ComparedSide {
  name: string;
  pool: pg.Pool;
  form: CallForm;
  priced: boolean;
}

interface SideRounds {
  rounds: number[];
  batchMilliseconds: number[];
  cpu: number[];
}

/**
 * Rounds of one scenario on two sides: each round sends both sides the same accounts in the same
 * order (under keys of their own), the sides taking turns going first.
 */
async function compareSides(
  sides: [ComparedSide, ComparedSide],
  scenario: 'spread' | 'hot',
  accountsOf: (scenario: 'spread' | 'hot') => string[][],
  settings: { roundCount: number; connectionCount: number; log: (line: string) => void },
): Promise<[SideRounds, SideRounds]> {
  const measured: [SideRounds, SideRounds] = [
    { rounds: [], batchMilliseconds: [], cpu: [] },
    { rounds: [], batchMilliseconds: [], cpu: [] },
  ];
  for (let round = 1; round <= settings.roundCount; round += 1) {
    const accounts = accountsOf(scenario);
    const order = round % 2 === 1 ? [0, 1] : [1, 0];
    for (const index of order) {
      const side = sides[index]!;
      const batches = batchesOf(accounts, `${side.name}-${scenario}-${round}`, side.priced);
      const figure = await send(side.pool, side.name, side.form, batches, settings.connectionCount);
      const into = measured[index]!;
      into.rounds.push(figure.perSecond);
      into.batchMilliseconds.push(...figure.batchMilliseconds);
      if (figure.cpuMicrosecondsPerSpend !== null) into.cpu.push(figure.cpuMicrosecondsPerSpend);
    }
    const last = (values: number[], digits: number) => values.at(-1)?.toFixed(digits) ?? '-';
    const [first, second] = measured;
    settings.log(
      `${scenario} round ${round}/${settings.roundCount}: ${sides[0].name} ${last(first.rounds, 0)}/s, ${sides[1].name} ${last(second.rounds, 0)}/s; ` +
        `CPU us/spend ${sides[0].name} ${last(first.cpu, 1)}, ${sides[1].name} ${last(second.cpu, 1)}`,
    );
  }
  return measured;
}

const medianOrNull = (values: number[]): number | null => (values.length === 0 ? null : median(values));

/** The accounts of each batch of a scenario: spread over the accounts (the same every run) or all on the hot one. */
function scenarioAccounts(batchCountPerRound: number, batchSize: number, accountCount: number): (scenario: 'spread' | 'hot') => string[][] {
  const random = randomIntegers(0x13);
  return (scenario) =>
    Array.from({ length: batchCountPerRound }, () =>
      Array.from({ length: batchSize }, () => (scenario === 'hot' ? 'hot' : `acct-${random(accountCount)}`)),
    );
}

/** The example catalog's rate cards, published into a bare database as a started Tally publishes them. */
async function publishExampleRateCards(url: string): Promise<void> {
  const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('select tally_sync_catalog_pricing($1, $2, $3, null)', [
      JSON.stringify(catalog.rate_cards.map((card) => ({ id: card.id, rates: card.rates }))),
      catalog.default_rate_card ?? null,
      JSON.stringify(catalog.plans.map((plan) => ({ id: plan.id, rate_card: plan.rate_card ?? null }))),
    ]);
  } finally {
    await client.end();
  }
}

export async function measureBatchSql(serverUrl: string, options: BatchSqlOptions = {}): Promise<BatchSqlFigure[]> {
  const roundCount = options.roundCount ?? 5;
  const batchCountPerRound = options.batchCountPerRound ?? 24;
  const batchSize = options.batchSize ?? 256;
  const connectionCount = options.connectionCount ?? 4;
  const accountCount = options.accountCount ?? 10_000;
  const versionBefore = options.versionBefore ?? setBasedVersionBefore;
  const log = options.log ?? (() => undefined);
  const names: Record<Side, string> = { before: `tally_batch_sql_before_${process.pid}`, after: `tally_batch_sql_after_${process.pid}` };
  const pools: Partial<Record<Side, pg.Pool>> = {};
  try {
    const accountsOf = scenarioAccounts(batchCountPerRound, batchSize, accountCount);
    const warmUpBatches = [...batchesOf(accountsOf('spread'), 'warm-spread'), ...batchesOf(accountsOf('hot'), 'warm-hot')];
    for (const side of ['before', 'after'] as const) {
      const url = databaseUrlFor(serverUrl, names[side]);
      await ensureDatabase(serverUrl, names[side]);
      if (side === 'before') {
        const before = sqlAtRevisionBefore(versionBefore);
        await migrate(url, () => undefined, before).finally(() => before.remove());
      } else {
        await migrate(url);
      }
      await setUp(url, accountCount);
      await warmUp(url, side, migrationForm(side, versionBefore), warmUpBatches, connectionCount);
      pools[side] = quietWhenDropped(new pg.Pool({ connectionString: url, max: connectionCount, idleTimeoutMillis: 0 }));
      log(`${side}: ${accountCount} accounts funded, warmed up`);
    }
    const sides: [ComparedSide, ComparedSide] = [
      { name: 'before', pool: pools.before!, form: migrationForm('before', versionBefore), priced: false },
      { name: 'after', pool: pools.after!, form: 'arrays', priced: false },
    ];
    const figures: BatchSqlFigure[] = [];
    for (const scenario of ['spread', 'hot'] as const) {
      const [before, after] = await compareSides(sides, scenario, accountsOf, { roundCount, connectionCount, log });
      const beforePerSecond = median(before.rounds);
      const afterPerSecond = median(after.rounds);
      figures.push({
        scenario,
        beforePerSecond,
        afterPerSecond,
        ratio: afterPerSecond / beforePerSecond,
        beforeRounds: before.rounds,
        afterRounds: after.rounds,
        beforeBatchMilliseconds: median(before.batchMilliseconds),
        afterBatchMilliseconds: median(after.batchMilliseconds),
        beforeCpuMicroseconds: medianOrNull(before.cpu),
        afterCpuMicroseconds: medianOrNull(after.cpu),
      });
    }
    return figures;
  } finally {
    await Promise.all(Object.values(pools).map((pool) => pool.end()));
    await dropDatabases(serverUrl, Object.values(names));
  }
}

export interface PricedBatchSqlFigure {
  scenario: 'spread' | 'hot';
  /** Spends per second of each round, plain (1 credit) and priced (the meter and quantities of `pricedSpend`). */
  plainRounds: number[];
  pricedRounds: number[];
  /** Median of the rounds' priced / plain spends per second. */
  ratio: number;
  plainCpuMicroseconds: number | null;
  pricedCpuMicroseconds: number | null;
}

/**
 * Plain and priced spends in tally_usage_batch on one database migrated to the newest, with the
 * example catalog's rate cards published: the same accounts, batches and connections, rounds
 * taking turns going first. What pricing adds to a batch (pricing each event by its account's
 * card, the carry) is the only difference.
 */
export async function measurePricedBatchSql(serverUrl: string, options: BatchSqlOptions = {}): Promise<PricedBatchSqlFigure[]> {
  const roundCount = options.roundCount ?? 5;
  const batchCountPerRound = options.batchCountPerRound ?? 24;
  const batchSize = options.batchSize ?? 256;
  const connectionCount = options.connectionCount ?? 4;
  const accountCount = options.accountCount ?? 10_000;
  const log = options.log ?? (() => undefined);
  const name = `tally_batch_sql_priced_${process.pid}`;
  let pool: pg.Pool | undefined;
  try {
    const url = databaseUrlFor(serverUrl, name);
    await ensureDatabase(serverUrl, name);
    await migrate(url);
    await publishExampleRateCards(url);
    await setUp(url, accountCount);
    const accountsOf = scenarioAccounts(batchCountPerRound, batchSize, accountCount);
    for (const priced of [false, true]) {
      const warm = [
        ...batchesOf(accountsOf('spread'), `warm-spread-${priced}`, priced),
        ...batchesOf(accountsOf('hot'), `warm-hot-${priced}`, priced),
      ];
      await warmUp(url, priced ? 'priced' : 'plain', priced ? 'priced' : 'arrays', warm, connectionCount);
    }
    pool = quietWhenDropped(new pg.Pool({ connectionString: url, max: connectionCount, idleTimeoutMillis: 0 }));
    log(`plain and priced: ${accountCount} accounts funded, warmed up`);
    const sides: [ComparedSide, ComparedSide] = [
      { name: 'plain', pool, form: 'arrays', priced: false },
      { name: 'priced', pool, form: 'priced', priced: true },
    ];
    const figures: PricedBatchSqlFigure[] = [];
    for (const scenario of ['spread', 'hot'] as const) {
      const [plain, priced] = await compareSides(sides, scenario, accountsOf, { roundCount, connectionCount, log });
      figures.push({
        scenario,
        plainRounds: plain.rounds,
        pricedRounds: priced.rounds,
        ratio: median(priced.rounds) / median(plain.rounds),
        plainCpuMicroseconds: medianOrNull(plain.cpu),
        pricedCpuMicroseconds: medianOrNull(priced.cpu),
      });
    }
    return figures;
  } finally {
    await pool?.end();
    await dropDatabases(serverUrl, [name]);
  }
}

async function dropDatabases(serverUrl: string, names: string[]): Promise<void> {
  const admin = new pg.Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    for (const name of names) await admin.query(`drop database if exists ${name} with (force)`);
  } finally {
    await admin.end();
  }
}

export function formatBatchSql(figures: BatchSqlFigure[], options: BatchSqlOptions = {}): string {
  const range = (values: number[]) => `${Math.min(...values).toFixed(0)}-${Math.max(...values).toFixed(0)}`;
  const cpu = (value: number | null) => (value === null ? '-' : value.toFixed(1));
  const lines = [
    `tally_usage_batch at the SQL level: batches of ${options.batchSize ?? 256} spends, ${options.connectionCount ?? 4} connections, ` +
      `median of ${options.roundCount ?? 5} rounds of ${options.batchCountPerRound ?? 24} batches per side`,
    `scenario  spends/s before ${String((options.versionBefore ?? setBasedVersionBefore) + 1).padStart(4, '0')} (range)  now (range)               after/before  ms/batch before  after  CPU us/spend before  after  before/after`,
  ];
  for (const figure of figures) {
    const cpuRatio =
      figure.beforeCpuMicroseconds === null || figure.afterCpuMicroseconds === null
        ? '-'
        : `${(figure.beforeCpuMicroseconds / figure.afterCpuMicroseconds).toFixed(2)}x`;
    lines.push(
      figure.scenario.padEnd(8) +
        `${figure.beforePerSecond.toFixed(0)} (${range(figure.beforeRounds)})`.padStart(30) +
        `${figure.afterPerSecond.toFixed(0)} (${range(figure.afterRounds)})`.padStart(20) +
        `${figure.ratio.toFixed(2)}x`.padStart(14) +
        figure.beforeBatchMilliseconds.toFixed(1).padStart(17) +
        figure.afterBatchMilliseconds.toFixed(1).padStart(7) +
        cpu(figure.beforeCpuMicroseconds).padStart(21) +
        cpu(figure.afterCpuMicroseconds).padStart(7) +
        cpuRatio.padStart(14),
    );
  }
  return lines.join('\n');
}

async function main(): Promise<void> {
  let embedded: EmbeddedDatabase | undefined;
  let scratch: string | undefined;
  let serverUrl = process.env.TEST_DATABASE_URL || process.env.BENCH_DATABASE_URL;
  if (serverUrl === undefined || serverUrl === '') {
    scratch = mkdtempSync(join(tmpdir(), 'tally-bench-sql-'));
    embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
    serverUrl = embedded.url;
  }
  const options: BatchSqlOptions = {
    roundCount: Number(process.env.BENCH_ROUNDS ?? 5),
    batchCountPerRound: Number(process.env.BENCH_BATCHES ?? 24),
    log: (line) => process.stderr.write(`${line}\n`),
  };
  try {
    console.log(formatBatchSql(await measureBatchSql(serverUrl, options), options));
  } finally {
    await embedded?.stop();
    if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) await main();
