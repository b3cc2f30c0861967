/**
 * `npm run bench:profile -- [usage-hot|usage-spread]`: where the CPU goes while one hot
 * path runs under load. The real `tally start` runs with `node --cpu-prof` while autocannon (in
 * this process) drives the path for BENCH_SECONDS (default 10). Printed afterwards:
 *
 * - the CPU seconds spent by each party on the 2 cores: the Tally server, PostgreSQL's
 *   processes (read from /proc, so only when PostgreSQL runs on this machine), and the load
 *   generator; what the machine has left over is idle;
 * - how many spends went together in each usage transaction (the group commit's batches);
 * - the server's profile summed by where the code lives (Tally's own source by folder, each npm
 *   package, Node's internals, the garbage collector), then the functions with the most self
 *   time.
 *
 * The .cpuprofile file stays in the printed folder for Chrome DevTools or speedscope.
 */
import { mkdtempSync, readdirSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { ensureDatabase } from '../src/db/embedded.js';
import { migrate } from '../src/db/migrate.js';
import { databaseUrlFor } from '../test/helpers/database.js';
import { accountCount, hotAccount, measureHttp, spreadAccount } from './load.js';
import { openBenchPostgres } from './scratch-server.js';
import { benchAdminKey, benchAppKey, startBenchServer } from './server.js';

const seconds = Number(process.env.BENCH_SECONDS ?? 10);
const scenario = process.argv[2] ?? 'usage-hot';
const scenarios = ['usage-hot', 'usage-spread'];
if (!scenarios.includes(scenario)) throw new Error(`scenario ${scenario}: expected one of ${scenarios.join(', ')}`);
const ticksPerSecond = 100;

interface CpuProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface CpuProfile {
  nodes: CpuProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/** CPU seconds (user + system) a process has used, from /proc; 0 once it is gone. */
function cpuSeconds(pid: number): number {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(fields[11]) + Number(fields[12])) / ticksPerSecond;
  } catch {
    return 0;
  }
}

/** CPU seconds used by every PostgreSQL process on this machine (exited backends are lost). */
function postgresCpuSeconds(): number {
  let total = 0;
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      if (readFileSync(`/proc/${entry}/comm`, 'utf8').trim() === 'postgres') total += cpuSeconds(Number(entry));
    } catch {
      // The process ended while it was read.
    }
  }
  return total;
}

/** Where a profiled function lives: Tally's folder, an npm package, or Node itself. */
function placeOf(url: string, functionName: string): string {
  if (url === '') return functionName.startsWith('(') ? functionName : '(native)';
  const inPackage = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (inPackage !== null) return inPackage[1]!;
  if (url.startsWith('node:')) return 'node internals';
  const own = /\/(src\/[^/]+)\//.exec(url);
  return own !== null ? own[1]! : url.replace(/^file:\/\//, '');
}

function summarize(profile: CpuProfile): void {
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfMicroseconds = new Map<number, number>();
  profile.samples.forEach((id, index) => selfMicroseconds.set(id, (selfMicroseconds.get(id) ?? 0) + (profile.timeDeltas[index] ?? 0)));
  const total = [...selfMicroseconds.values()].reduce((sum, value) => sum + value, 0);
  const places = new Map<string, number>();
  const functions = new Map<string, number>();
  for (const [id, microseconds] of selfMicroseconds) {
    const { callFrame } = byId.get(id)!;
    const place = placeOf(callFrame.url, callFrame.functionName);
    places.set(place, (places.get(place) ?? 0) + microseconds);
    const name = `${callFrame.functionName || '(anonymous)'}  ${callFrame.url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*?\/(src|bench)\//, '$1/')}:${callFrame.lineNumber + 1}`;
    functions.set(name, (functions.get(name) ?? 0) + microseconds);
  }
  const share = (value: number) => `${((100 * value) / total).toFixed(1).padStart(5)} %`;
  console.log('\nserver profile by place (self time; "(idle)" is the event loop waiting):');
  for (const [place, microseconds] of [...places].sort((a, b) => b[1] - a[1]).slice(0, 20))
    console.log(`  ${share(microseconds)}  ${place}`);
  console.log('\nfunctions with the most self time:');
  for (const [name, microseconds] of [...functions].sort((a, b) => b[1] - a[1]).slice(0, 25))
    console.log(`  ${share(microseconds)}  ${name}`);
}

/** The usage batch sizes the server saw, from its /metrics (buckets as counts of their own). */
async function batchSizes(serverUrl: string): Promise<{ count: number; spends: number; buckets: { upTo: string; count: number }[] }> {
  const text = await (await fetch(`${serverUrl}/metrics`, { headers: { authorization: `Bearer ${benchAdminKey}` } })).text();
  const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? 0);
  let below = 0;
  const buckets = [...text.matchAll(/^tally_usage_batch_spends_bucket\{le="([^"]+)"\} (\d+)/gm)].map(([, upTo, cumulative]) => {
    const count = Number(cumulative) - below;
    below = Number(cumulative);
    return { upTo: upTo!, count };
  });
  return { count: value(/^tally_usage_batch_spends_count (\d+)/m), spends: value(/^tally_usage_batch_spends_sum (\d+)/m), buckets };
}

async function main(): Promise<void> {
  const postgres = await openBenchPostgres('profile');
  const name = `tally_profile_${process.pid}`;
  await ensureDatabase(postgres.serverUrl, name);
  const url = databaseUrlFor(postgres.serverUrl, name);
  const profileDirectory = mkdtempSync(join(tmpdir(), 'tally-profile-'));
  try {
    await migrate(url);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    await client.query(`insert into accounts (id) select 'acct-' || n from generate_series(0, ${accountCount - 1}) n union all select $1`, [
      hotAccount,
    ]);
    await client.query(
      `select tally_add_grant(id, 'promo', 1000000000, 0, null, 'bench-fund', 'grant', '{}'::jsonb, 'system', null, now()) from accounts`,
    );
    await client.query('vacuum analyze');
    await client.end();

    const transactions = async (): Promise<number> => {
      const reader = new pg.Client({ connectionString: url });
      await reader.connect();
      try {
        // Backends report their counts within a second of going idle.
        await new Promise((resolve) => setTimeout(resolve, 1500));
        const { rows } = await reader.query<{ count: string }>(
          'select xact_commit + xact_rollback as count from pg_stat_database where datname = current_database()',
        );
        return Number(rows[0]!.count);
      } finally {
        await reader.end();
      }
    };
    const server = await startBenchServer(url, {}, ['--cpu-prof', `--cpu-prof-dir=${profileDirectory}`]);
    const usage = (account: () => string) =>
      measureHttp({
        url: server.url,
        apiKey: benchAppKey,
        seconds,
        path: () => `/v1/accounts/${account()}/usage`,
        body: (key) => `{"amount":1,"idempotency_key":"${key}"}`,
      });
    const idleRss = server.takePeakRssMiB();
    const transactionsBefore = await transactions();
    const start = {
      server: cpuSeconds(server.pid),
      postgres: postgresCpuSeconds(),
      generator: process.cpuUsage(),
      wall: performance.now(),
    };
    const figures =
      scenario === 'usage-hot' ? await usage(() => hotAccount) : await usage(() => spreadAccount(Math.floor(Math.random() * accountCount)));
    const wall = (performance.now() - start.wall) / 1000;
    const used = {
      server: cpuSeconds(server.pid) - start.server,
      postgres: postgresCpuSeconds() - start.postgres,
      generator: (() => {
        const { user, system } = process.cpuUsage(start.generator);
        return (user + system) / 1e6;
      })(),
    };
    const loadedRss = server.takePeakRssMiB();
    const batches = await batchSizes(server.url);
    const transactionCount = (await transactions()) - transactionsBefore;
    await server.stop();

    const capacity = wall * cpus().length;
    console.log(`\n${scenario}: ${Math.round(figures.perSecond)}/s, p50 ${figures.p50} ms, p99 ${figures.p99} ms over ${seconds} s`);
    console.log(`CPU seconds of the ${cpus().length} cores' ${capacity.toFixed(1)} over the run:`);
    const idle = capacity - used.server - used.postgres - used.generator;
    for (const [party, value] of [
      ['Tally server', used.server],
      ['PostgreSQL', used.postgres],
      ['load generator', used.generator],
      ['idle or other', idle],
    ] as const) {
      console.log(
        `  ${party.padEnd(16)} ${value.toFixed(1).padStart(6)} s  ${((100 * value) / capacity).toFixed(0).padStart(3)} %  ${((1e6 * value) / (figures.perSecond * seconds)).toFixed(0).padStart(5)} µs a request`,
      );
    }
    console.log(`server resident memory: ${idleRss.toFixed(0)} MiB idle, ${loadedRss.toFixed(0)} MiB at most under the load`);
    console.log(
      `PostgreSQL transactions in the database: ${transactionCount} (${(transactionCount / (figures.perSecond * seconds)).toFixed(3)} a request)`,
    );
    console.log(`usage transactions: ${batches.count}, ${(batches.spends / batches.count).toFixed(1)} spends each on average; by size:`);
    console.log(`  ${batches.buckets.map(({ upTo, count }) => `≤${upTo}: ${count}`).join('  ')}`);
    const file = readdirSync(profileDirectory).find((entry) => entry.endsWith('.cpuprofile'));
    if (file === undefined) throw new Error(`the server wrote no profile to ${profileDirectory}`);
    summarize(JSON.parse(readFileSync(join(profileDirectory, file), 'utf8')) as CpuProfile);
    console.log(`\nprofile: ${join(profileDirectory, file)}`);
  } finally {
    const admin = new pg.Client({ connectionString: postgres.serverUrl });
    await admin.connect();
    await admin.query(`drop database if exists ${name} with (force)`).finally(() => admin.end());
    await postgres.stop();
  }
}

await main();
