/**
 * `npx tsx bench/webhooks.ts`: Stripe webhooks, intake and apply, in one run.
 *
 * Intake: signed `checkout.session.completed` deliveries (pack purchases, as Stripe sends them:
 * without line items) posted over real HTTP with 64 keep-alive connections by autocannon in
 * another process, each body unique and signed before the round starts. Two variants in the
 * same run: one insert and one commit per delivery (group commit off), and the group commit
 * Tally uses. Every delivery must be answered 200 and stored.
 *
 * Apply: pack purchases over many accounts stored in the inbox, then applied by one worker's
 * drain(): one event at a time (1 lane) against the default number of lanes. Each event asks
 * the fake Stripe for its session's line items before its transaction, as in production.
 *
 * Each figure is the median of several short rounds, and ratios compare variants measured in
 * the same run on the same machine (other work on the machine moves the figures, less the
 * ratios). Settings: BENCH_ROUNDS, BENCH_INTAKE_DELIVERIES, BENCH_APPLY_EVENTS, and
 * BENCH_DATABASE_URL or TEST_DATABASE_URL for a server other than the embedded one.
 *
 * `measureIntake` and `measureApply` are exported for other bench scripts: open the setting
 * with `openWebhookBench`, measure, then `close()` it.
 */
import autocannon from 'autocannon';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import pg from 'pg';
import { pino } from 'pino';
import Stripe from 'stripe';
import { assemble, type Assembled } from '../src/app.js';
import { parseCatalog, type Catalog } from '../src/billing/catalog.js';
import { loadClaimHasher, type ClaimHasher } from '../src/billing/claim-hasher.js';
import { alertPort } from '../src/ops/rules.js';
import { Database } from '../src/db/database.js';
import { ensureDatabase, startEmbeddedDatabase, type EmbeddedDatabase } from '../src/db/embedded.js';
import { migrate } from '../src/db/migrate.js';
import { StripeGateway } from '../src/stripe/gateway.js';
import { intakeBatchesConcurrentMax, storeEvents } from '../src/webhooks/inbox.js';
import type { VerifiedEvent } from '../src/stripe/signature.js';
import { WebhookWorker, defaultWorkerOptions } from '../src/webhooks/worker.js';
import { databaseUrlFor } from '../test/helpers/database.js';
import { FakeStripe } from '../test/helpers/fake-stripe.js';
import { checkoutLineItem, checkoutSession, event } from '../test/helpers/stripe-events.js';

const webhookSecret = 'whsec_bench_0123456789';
const accountCount = 10_000;
const connectionCount = 64;
const silent = pino({ level: 'silent' });

export interface WebhookBench {
  db: Database;
  fake: FakeStripe;
  catalog: Catalog;
  hasher: ClaimHasher;
  gateway: StripeGateway;
  close(): Promise<void>;
}

/** A migrated database with 10,000 accounts, and a fake Stripe that knows every pack session. */
export async function openWebhookBench(options: { serverUrl?: string } = {}): Promise<WebhookBench> {
  let embedded: EmbeddedDatabase | undefined;
  let scratch: string | undefined;
  let serverUrl = options.serverUrl ?? process.env.BENCH_DATABASE_URL ?? process.env.TEST_DATABASE_URL;
  if (serverUrl === undefined || serverUrl === '') {
    scratch = mkdtempSync(join(tmpdir(), 'tally-bench-webhooks-'));
    embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
    serverUrl = embedded.url;
  }
  const name = `tally_bench_webhooks_${process.pid}`;
  await ensureDatabase(serverUrl, name);
  const url = databaseUrlFor(serverUrl, name);
  await migrate(url);
  const db = new Database({ url, poolSize: connectionCount, statementTimeoutMilliseconds: 60_000 });
  await db.query(`insert into accounts (id) select 'acct-' || n from generate_series(0, ${accountCount - 1}) n on conflict do nothing`);
  const fake = await new FakeStripe().start();
  const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
  const hasher = await loadClaimHasher(db, undefined);
  const gateway = new StripeGateway({ secretKey: 'sk_test_bench', apiBase: fake.url });
  const dropped = serverUrl;
  return {
    db,
    fake,
    catalog,
    hasher,
    gateway,
    async close() {
      await fake.stop();
      await db.close();
      const admin = new pg.Client({ connectionString: dropped });
      await admin.connect();
      await admin.query(`drop database if exists ${name} with (force)`);
      await admin.end();
      await embedded?.stop();
      if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
    },
  };
}

let purchaseCount = 0;

/** A pack purchase as Stripe sends it (no line items in the payload); the fake Stripe knows its line items. */
function packPurchase(fake: FakeStripe | undefined, runTag: string): Record<string, unknown> {
  purchaseCount += 1;
  const account = (purchaseCount * 7919) % accountCount;
  const session = checkoutSession({
    mode: 'payment',
    accountId: `acct-${account}`,
    customer: `cus_bench_${account}`,
    paymentIntent: `pi_bench_${runTag}_${purchaseCount}`,
    packId: 'pack_1000',
    lineItemsInPayload: false,
  });
  session.id = `cs_bench_${runTag}_${purchaseCount}`;
  fake?.checkoutLineItems.set(session.id, [checkoutLineItem({ price: 'price_pack_1000' })]);
  return event('checkout.session.completed', session, { id: `evt_bench_${runTag}_${purchaseCount}` });
}

export interface IntakeFigures {
  perSecond: number;
  p50: number;
  p99: number;
  deliveries: number;
}

/**
 * Posts `deliveries` unique signed deliveries to a Tally (assembled here, worker not started)
 * with 64 connections from autocannon in another process. `intakeOptions` sets the group
 * commit; `{ batchSizeMax: 1, concurrentBatchesMax: 64 }` is one insert per delivery.
 */
export async function measureIntake(
  bench: WebhookBench,
  options: { deliveries: number; intakeOptions?: { batchSizeMax?: number; concurrentBatchesMax?: number } },
): Promise<IntakeFigures> {
  const parts: Assembled = await assemble({
    db: bench.db,
    catalog: bench.catalog,
    keys: { apiKey: 'bench-app-key-0123456789', adminKey: 'bench-admin-key-0123456789' },
    logger: silent,
    logLevel: 'silent',
    version: 'bench',
    stripeSecretKey: 'sk_test_bench',
    stripeApiBase: bench.fake.url,
    webhookSecrets: [webhookSecret],
    fingerprintSecret: 'bench-fingerprint-secret-0123456789',
    intakeOptions: options.intakeOptions,
    sweepIntervalSeconds: 60,
  });
  try {
    const address = await parts.app.listen({ port: 0, host: '127.0.0.1' });
    const runTag = `i${Date.now().toString(36)}`;
    const result = await runLoadGenerator({
      url: `${address}/webhooks/stripe`,
      deliveries: options.deliveries,
      connections: connectionCount,
      runTag,
    });
    if (result.non2xx !== 0 || result.errors !== 0 || result.completed !== options.deliveries) {
      throw new Error(`intake: ${result.completed} of ${options.deliveries} answered, ${result.non2xx} not 2xx, ${result.errors} errors`);
    }
    const stored = await bench.db.query<{ count: number }>(`select count(*)::int as count from webhook_events where id like $1`, [
      `evt_bench_${runTag}_%`,
    ]);
    if (stored.rows[0]?.count !== options.deliveries) throw new Error(`intake: ${stored.rows[0]?.count} of ${options.deliveries} stored`);
    return { perSecond: result.completed / result.seconds, p50: result.p50, p99: result.p99, deliveries: options.deliveries };
  } finally {
    await parts.close();
    // The next round starts from an empty inbox.
    await bench.db.query('delete from webhook_events');
  }
}

interface LoadSpec {
  url: string;
  deliveries: number;
  connections: number;
  runTag: string;
}

interface LoadResult {
  completed: number;
  non2xx: number;
  errors: number;
  seconds: number;
  p50: number;
  p99: number;
}

/** Runs this file as the load generator, in a process of its own; answers what autocannon saw. */
function runLoadGenerator(spec: LoadSpec): Promise<LoadResult> {
  return new Promise((resolveResult, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--load-generator'], {
      env: { ...process.env, BENCH_LOAD_SPEC: JSON.stringify(spec) },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code) => {
      if (code !== 0) return reject(new Error(`load generator exited with ${code}`));
      resolveResult(JSON.parse(output.trim().split('\n').at(-1) ?? '{}') as LoadResult);
    });
  });
}

/** The load generator's side: signs every body first, then lets autocannon post each once. */
async function loadGenerator(): Promise<void> {
  const spec = JSON.parse(process.env.BENCH_LOAD_SPEC ?? '{}') as LoadSpec;
  const deliveries = Array.from({ length: spec.deliveries }, () => {
    const payload = JSON.stringify(packPurchase(undefined, spec.runTag));
    return { payload, header: Stripe.webhooks.generateTestHeaderString({ payload, secret: webhookSecret }) };
  });
  let next = 0;
  // Timed here, from the start to the last answer: autocannon ends a run of a fixed number of
  // requests on its once-a-second ticker, so its own duration is a whole number of seconds
  // (8,000 deliveries read as 2,649/s, 3.02 s, or 1,985/s, 4.03 s, and nothing between).
  const started = performance.now();
  let lastAnswer = started;
  let finish: (error: Error | null, result: autocannon.Result) => void = () => undefined;
  const finished = new Promise<autocannon.Result>((resolveRun, rejectRun) => {
    finish = (error, result) => (error === null ? resolveRun(result) : rejectRun(error));
  });
  const run = autocannon(
    {
      url: spec.url,
      connections: spec.connections,
      amount: spec.deliveries,
      method: 'POST',
      requests: [
        {
          setupRequest: (request) => {
            const delivery = deliveries[next % deliveries.length] as { payload: string; header: string };
            next += 1;
            return {
              ...request,
              method: 'POST',
              body: delivery.payload,
              headers: { 'content-type': 'application/json', 'stripe-signature': delivery.header },
            };
          },
        },
      ],
    },
    (error, result) => finish(error ?? null, result),
  );
  run.on('response', () => {
    lastAnswer = performance.now();
  });
  const result = await finished;
  const answer: LoadResult = {
    completed: result['2xx'] + result.non2xx,
    non2xx: result.non2xx,
    errors: result.errors + result.timeouts,
    seconds: (lastAnswer - started) / 1000,
    p50: result.latency.p50,
    p99: result.latency.p99,
  };
  process.stdout.write(`${JSON.stringify(answer)}\n`);
}

export interface ApplyFigures {
  perSecond: number;
  events: number;
  lanes: number;
}

/** Stores `events` pack purchases over the accounts, then times one drain() of a worker with `lanes` lanes. */
export async function measureApply(bench: WebhookBench, options: { events: number; lanes: number }): Promise<ApplyFigures> {
  const runTag = `a${options.lanes}x${Date.now().toString(36)}`;
  const purchases = Array.from({ length: options.events }, () => packPurchase(bench.fake, runTag));
  for (let start = 0; start < purchases.length; start += 256) {
    await storeEvents(
      bench.db,
      purchases
        .slice(start, start + 256)
        .map((purchase) => ({ event: purchase as unknown as VerifiedEvent, rawBody: Buffer.from(JSON.stringify(purchase)) })),
    );
  }
  const worker = new WebhookWorker(bench.db, bench.catalog, bench.hasher, alertPort(bench.catalog), bench.gateway, silent, {
    ...defaultWorkerOptions,
    concurrentEventsMax: options.lanes,
  });
  const started = performance.now();
  await worker.drain();
  const seconds = (performance.now() - started) / 1000;
  const { rows } = await bench.db.query<{ count: number }>(
    `select count(*)::int as count from webhook_events where id like $1 and status = 'processed'`,
    [`evt_bench_${runTag}_%`],
  );
  if (rows[0]?.count !== options.events) throw new Error(`apply: ${rows[0]?.count} of ${options.events} events processed`);
  bench.fake.requests.length = 0;
  return { perSecond: options.events / seconds, events: options.events, lanes: options.lanes };
}

const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)] ?? 0;

export interface WebhookBenchResult {
  intake: { label: string; perSecond: number; p50: number; p99: number }[];
  apply: { label: string; perSecond: number }[];
  rounds: number;
  intakeDeliveries: number;
  applyEvents: number;
}

/** Every variant, in alternating order each round; medians of the rounds. */
export async function runWebhookBench(
  options: { rounds?: number; intakeDeliveries?: number; applyEvents?: number; log?: (line: string) => void } = {},
): Promise<WebhookBenchResult> {
  const rounds = options.rounds ?? Number(process.env.BENCH_ROUNDS ?? 3);
  const intakeDeliveries = options.intakeDeliveries ?? Number(process.env.BENCH_INTAKE_DELIVERIES ?? 8000);
  const applyEvents = options.applyEvents ?? Number(process.env.BENCH_APPLY_EVENTS ?? 1000);
  const log = options.log ?? ((line: string) => process.stderr.write(`${line}\n`));
  const intakeVariants = [
    { label: 'one insert per delivery', intakeOptions: { batchSizeMax: 1, concurrentBatchesMax: connectionCount } },
    { label: `group commit (${intakeBatchesConcurrentMax} in flight)`, intakeOptions: undefined },
  ];
  const laneVariants = [1, defaultWorkerOptions.concurrentEventsMax];
  const intake = new Map<string, IntakeFigures[]>();
  const apply = new Map<number, ApplyFigures[]>();
  const bench = await openWebhookBench();
  try {
    // A short warm-up of each path, not counted: JIT, connections, the fake's sockets.
    await measureIntake(bench, { deliveries: Math.min(2000, intakeDeliveries) });
    await measureApply(bench, { events: Math.min(200, applyEvents), lanes: defaultWorkerOptions.concurrentEventsMax });
    for (let round = 1; round <= rounds; round += 1) {
      const order = round % 2 === 1 ? [0, 1] : [1, 0];
      for (const index of order) {
        const variant = intakeVariants[index] as (typeof intakeVariants)[number];
        const figures = await measureIntake(bench, { deliveries: intakeDeliveries, intakeOptions: variant.intakeOptions });
        (intake.get(variant.label) ?? intake.set(variant.label, []).get(variant.label))?.push(figures);
        log(`round ${round}/${rounds} intake ${variant.label}: ${figures.perSecond.toFixed(0)}/s, p99 ${figures.p99} ms`);
      }
      for (const index of order) {
        const lanes = laneVariants[index] as number;
        const figures = await measureApply(bench, { events: applyEvents, lanes });
        (apply.get(lanes) ?? apply.set(lanes, []).get(lanes))?.push(figures);
        log(`round ${round}/${rounds} apply ${lanes} lane(s): ${figures.perSecond.toFixed(0)} events/s`);
      }
    }
  } finally {
    await bench.close();
  }
  return {
    rounds,
    intakeDeliveries,
    applyEvents,
    intake: intakeVariants.map(({ label }) => {
      const figures = intake.get(label) ?? [];
      return {
        label,
        perSecond: median(figures.map((f) => f.perSecond)),
        p50: median(figures.map((f) => f.p50)),
        p99: median(figures.map((f) => f.p99)),
      };
    }),
    apply: laneVariants.map((lanes) => ({
      label: lanes === defaultWorkerOptions.concurrentEventsMax ? `${lanes} lanes (default)` : `${lanes} lane`,
      perSecond: median((apply.get(lanes) ?? []).map((f) => f.perSecond)),
    })),
  };
}

function report(result: WebhookBenchResult): void {
  const [baseline] = result.intake;
  console.log(
    `\nwebhook intake: signed checkout.session.completed, ${connectionCount} connections from autocannon in another process, median of ${result.rounds} rounds of ${result.intakeDeliveries} deliveries\n`,
  );
  console.log('variant                              deliveries/s    p50 ms    p99 ms   ratio');
  for (const line of result.intake) {
    console.log(
      `${line.label.padEnd(36)} ${line.perSecond.toFixed(0).padStart(12)} ${line.p50.toFixed(1).padStart(9)} ${line.p99.toFixed(1).padStart(9)}   ${(line.perSecond / (baseline?.perSecond ?? 1)).toFixed(2)}x`,
    );
  }
  const [serial] = result.apply;
  console.log(
    `\nwebhook apply: pack purchases over ${accountCount.toLocaleString('en')} accounts (line items asked of the fake Stripe), one drain(), median of ${result.rounds} rounds of ${result.applyEvents} events\n`,
  );
  console.log('variant                              events/s   ratio');
  for (const line of result.apply) {
    console.log(
      `${line.label.padEnd(36)} ${line.perSecond.toFixed(0).padStart(8)}   ${(line.perSecond / (serial?.perSecond ?? 1)).toFixed(2)}x`,
    );
  }
}

const invokedAs = process.argv[1] === undefined ? undefined : pathToFileURL(resolve(process.argv[1])).href;
if (process.argv.includes('--load-generator')) await loadGenerator();
else if (invokedAs === import.meta.url) report(await runWebhookBench());
