/**
 * `npm run simulate -- [--lifecycles N] [--seed S] [--seeds K] [--kinds a,b] [--history file.json] [--no-shrink] [--shrink-runs R] [--facts] [--dump-facts file.json]`
 *
 * Plays seeded customer lifecycles against the real Tally and checks it against the reference
 * model. `--seed S` replays seed S exactly; without it, seeds count up from a random start.
 * `--history file.json` replays a (shrunk) history printed by an earlier failure. PostgreSQL is
 * the embedded one unless TEST_DATABASE_URL names a server.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { startEmbeddedDatabase, type EmbeddedDatabase } from '../src/db/embedded.js';
import { migrate } from '../src/db/migrate.js';
import { databaseUrlFor } from '../test/helpers/database.js';
import { runHistory } from './run.js';
import { chaosFor, describe, kindsOf, runSeed } from './simulate.js';
import { allKinds, type Step } from './workload.js';

const args = process.argv.slice(2);
const option = (name: string): string | undefined => {
  const index = args.indexOf(`--${name}`);
  return index < 0 ? undefined : args[index + 1];
};
const lifecyclesPerSeed = 4;
const lifecycles = Number(option('lifecycles') ?? lifecyclesPerSeed);
// A replayed history plays its own steps; chaos besides delivery only when --kinds names it.
const kinds = new Set<string>(option('kinds')?.split(',') ?? (option('history') === undefined ? allKinds : []));
const seedGiven = option('seed');
const firstSeed = seedGiven === undefined ? Math.floor(Math.random() * 1_000_000) : Number(seedGiven);
const seedCount = Number(option('seeds') ?? (seedGiven === undefined ? Math.ceil(lifecycles / lifecyclesPerSeed) : 1));
const perSeed = seedGiven === undefined ? Math.min(lifecycles, lifecyclesPerSeed) : lifecycles;

let embedded: EmbeddedDatabase | undefined;
let scratch: string | undefined;
let serverUrl = process.env.TEST_DATABASE_URL ?? '';
if (serverUrl === '') {
  scratch = mkdtempSync(join(tmpdir(), 'tally-simulate-'));
  embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
  serverUrl = embedded.url;
}
const template = `tally_simulate_${process.pid}`;
const admin = new pg.Client({ connectionString: serverUrl });
await admin.connect();
await admin.query(`create database ${template}`);
await migrate(databaseUrlFor(serverUrl, template));
process.env.TALLY_TEST_SERVER_URL = serverUrl;
process.env.TALLY_TEST_TEMPLATE = template;

let failed = 0;
const started = Date.now();
try {
  const historyFile = option('history');
  if (historyFile !== undefined) {
    const steps = JSON.parse(readFileSync(historyFile, 'utf8')) as Step[];
    const result = await runHistory(steps, { seed: firstSeed, ...chaosFor(firstSeed, kinds) });
    const factsFile = option('dump-facts');
    if (factsFile !== undefined) writeFileSync(factsFile, JSON.stringify(result.facts, null, 1));
    for (const failure of result.failures) console.log(`  ${failure}`);
    failed = result.failures.length > 0 ? 1 : 0;
  } else {
    for (let seed = firstSeed; seed < firstSeed + seedCount; seed += 1) {
      const outcome = await runSeed(seed, {
        lifecycles: perSeed,
        kinds,
        shrink: !args.includes('--no-shrink'),
        shrinkRunsMax: Number(option('shrink-runs') ?? 40),
      });
      const { result } = outcome;
      console.log(
        `seed ${seed}: ${perSeed} lifecycles, ${result.steps} steps, ${result.events} deliveries, ${(outcome.milliseconds / 1000).toFixed(1)} s: ${result.failures.length === 0 ? 'ok' : 'FAILED'}`,
      );
      if (args.includes('--facts')) {
        const counts = new Map<string, number>();
        for (const fact of result.facts) counts.set(fact.kind, (counts.get(fact.kind) ?? 0) + 1);
        console.log(`  facts: ${[...counts].map(([kind, count]) => `${kind} ${count}`).join(', ')}`);
      }
      if (result.failures.length === 0) continue;
      failed += 1;
      for (const failure of result.failures.slice(0, 20)) console.log(`  ${failure}`);
      if (outcome.shrunk !== undefined) {
        console.log(
          `  shrunk to ${outcome.shrunk.steps.length} steps of kinds ${kindsOf(outcome.shrunk.steps).join(', ')}; it fails with:`,
        );
        for (const failure of outcome.shrunk.result.failures.slice(0, 10)) console.log(`    ${failure}`);
        console.log(`  replay: save the history below as FILE and run npm run simulate -- --seed ${seed} --history FILE`);
        console.log(describe(outcome.shrunk.steps));
      }
    }
  }
} finally {
  await admin.query(`select pg_terminate_backend(pid) from pg_stat_activity where datname like $1 and pid <> pg_backend_pid()`, [
    `${template}%`,
  ]);
  const leftovers = await admin.query<{ datname: string }>('select datname from pg_database where datname like $1', [`${template}%`]);
  for (const row of leftovers.rows) await admin.query(`drop database if exists ${pg.escapeIdentifier(row.datname)} with (force)`);
  await admin.end();
  await embedded?.stop();
  if (scratch !== undefined) rmSync(scratch, { recursive: true, force: true });
}
console.log(`${failed === 0 ? 'clean' : `${failed} failing`}, ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed === 0 ? 0 : 1);
