/**
 * The two ways the bench drives load: HTTP through autocannon (keep-alive connections, each
 * request with its own idempotency key), and the naive one-statement spend function that serves
 * as the baseline, driven by this process's `pg` client and by `pgbench` when it is on the PATH.
 */
import autocannon from 'autocannon';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { promisify } from 'node:util';
import pg from 'pg';

export interface Figures {
  perSecond: number;
  p50: number;
  p99: number;
}

export const connectionCount = 64;
export const accountCount = 10_000;
/** The account every request of a hot scenario spends from. */
export const hotAccount = 'hot';
export const spreadAccount = (index: number): string => `acct-${index % accountCount}`;

let requestCounter = 0;

/**
 * POSTs `body(key)` to `path()` for `seconds` over `connectionCount` keep-alive connections;
 * every answer must be 2xx (a refusal would measure something else), or this throws.
 */
export async function measureHttp(options: {
  url: string;
  apiKey: string;
  seconds: number;
  path: () => string;
  body: (key: string) => string;
  headers?: (body: string) => Record<string, string>;
}): Promise<Figures> {
  const run = (requestCounter += 1);
  let sequence = 0;
  const result = await autocannon({
    url: options.url,
    connections: connectionCount,
    duration: options.seconds,
    requests: [
      {
        method: 'POST',
        setupRequest: (request) => {
          sequence += 1;
          const body = options.body(`r${run}-${sequence}`);
          return {
            ...request,
            path: options.path(),
            body,
            headers: { authorization: `Bearer ${options.apiKey}`, 'content-type': 'application/json', ...(options.headers?.(body) ?? {}) },
          };
        },
      },
    ],
  });
  const failed = result.non2xx + result.errors + result.timeouts;
  if (failed > 0)
    throw new Error(
      `${failed} of ${result.requests.total} requests to ${options.url} failed (non-2xx ${result.non2xx}, errors ${result.errors}, timeouts ${result.timeouts})`,
    );
  return { perSecond: result.requests.total / options.seconds, p50: result.latency.p50, p99: result.latency.p99 };
}

/** The baseline's tables and its function: lock the row, update it, insert an entry; no keys, no grants. */
export async function createNaiveSpend(client: pg.Client, credits: number): Promise<void> {
  await client.query(`create table bench_naive_accounts (id text primary key, balance bigint not null check (balance >= 0))`);
  await client.query(
    `create table bench_naive_entries (id bigint generated always as identity primary key, account_id text not null, amount bigint not null, created_at timestamptz not null default now())`,
  );
  await client.query(`insert into bench_naive_accounts select id, $1 from accounts`, [credits]);
  await client.query(`
    create function bench_naive_spend(p_account text) returns bigint language plpgsql as $$
    declare v_balance bigint;
    begin
      select balance into v_balance from bench_naive_accounts where id = p_account for update;
      if v_balance is null or v_balance < 1 then raise exception 'naive overdraft'; end if;
      update bench_naive_accounts set balance = balance - 1 where id = p_account;
      insert into bench_naive_entries (account_id, amount) values (p_account, -1);
      return v_balance - 1;
    end $$`);
}

/** The naive spend function driven by `connectionCount` connections of this process's `pg` client. */
export async function measureNaiveNode(url: string, seconds: number, account: () => string): Promise<Figures> {
  const pool = new pg.Pool({ connectionString: url, max: connectionCount });
  try {
    const latencies: number[] = [];
    const stopAt = performance.now() + seconds * 1000;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: connectionCount }, async () => {
        while (performance.now() < stopAt) {
          const begin = performance.now();
          await pool.query('select bench_naive_spend($1)', [account()]);
          latencies.push(performance.now() - begin);
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    latencies.sort((a, b) => a - b);
    const at = (quantile: number) => latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * quantile))] ?? 0;
    return { perSecond: latencies.length / elapsed, p50: at(0.5), p99: at(0.99) };
  } finally {
    await pool.end();
  }
}

/**
 * pgbench opens its connections inside its -T duration (and its tps leaves that time out):
 * 64 scram connections take a few seconds on a busy machine, so the run is that much longer.
 */
const pgbenchConnectSeconds = 5;

/** The same function driven by `pgbench` (undefined when pgbench is not on the PATH). */
export async function measureNaivePgbench(url: string, seconds: number, hot: boolean): Promise<Figures | undefined> {
  const folder = mkdtempSync(join(tmpdir(), 'tally-pgbench-'));
  const script = join(folder, 'spend.sql');
  writeFileSync(
    script,
    hot
      ? `select bench_naive_spend('${hotAccount}');\n`
      : `\\set n random(0, ${accountCount - 1})\nselect bench_naive_spend('acct-' || :n);\n`,
  );
  try {
    const { stdout } = await promisify(execFile)(
      'pgbench',
      ['-n', '-c', String(connectionCount), '-j', '2', '-T', String(seconds + pgbenchConnectSeconds), '-r', '-f', script, url],
      { maxBuffer: 1 << 22 },
    );
    const tps = Number(/tps = ([\d.]+)/.exec(stdout)?.[1] ?? Number.NaN);
    const latency = Number(/latency average = ([\d.]+) ms/.exec(stdout)?.[1] ?? Number.NaN);
    if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${stdout}`);
    // pgbench prints the average latency, not percentiles: shown in the p50 column, p99 left blank.
    return { perSecond: tps, p50: latency, p99: Number.NaN };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  } finally {
    rmSync(folder, { recursive: true, force: true });
  }
}

export const median = (values: number[]): number => {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) => a - b);
  return sorted.length === 0 ? Number.NaN : sorted[Math.floor(sorted.length / 2)]!;
};
