import { SingleBar } from 'cli-progress';
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { pino } from 'pino';
import { CatalogError, loadCatalog } from '../billing/catalog.js';
import { loadClaimHasher } from '../billing/claim-hasher.js';
import { ConfigError, loadConfig } from '../config.js';
import { Database } from '../db/database.js';
import { EmbeddedDatabaseError, type EmbeddedDatabase } from '../db/embedded.js';
import { assertSchemaCurrent, migrate, SchemaNotCurrentError } from '../db/migrate.js';
import { errorStatuses, InvariantError, isErrorCode, TallyError } from '../errors.js';
import { Ledger } from '../ledger/ledger.js';
import { openDatabase, shutdownSecondsMax, startTally, version, type Tally } from '../main.js';
import { exportAccount } from '../ops/gdpr.js';
import { reconcile } from '../ops/reconcile.js';
import { alertPort, grantWatcher } from '../ops/rules.js';
import { StripeGateway } from '../stripe/gateway.js';
import { WebhookWorker, defaultWorkerOptions } from '../webhooks/worker.js';

/**
 * The `tally` command. Exit codes: 0 done; 1 failed; 2 bad usage or configuration (a database
 * to migrate first included); 3 the account or event does not exist; 4 reconciliation found
 * problems. Results go to stdout, errors and progress to stderr.
 */
export const exitCode = { failed: 1, usage: 2, notFound: 3, findings: 4 } as const;

const program = new Command('tally')
  .version(version)
  .description('Tally: credits ledger and Stripe billing engine')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride();

/**
 * Runs work against the configured database: DATABASE_URL, or the embedded one of the data
 * folder (the running Tally's server, or one started for the command). Commands other than
 * `start` and `migrate` never create a database: in a folder without data they would only
 * answer from an empty one, so they refuse and say where the data is looked for. Nor do they
 * migrate one: a database that was never migrated, or is older than this Tally, is refused
 * with what to run, and left as it was.
 */
async function withDatabase<T>(work: (db: Database) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const { url, embedded } = await openDatabase(config, pino({ level: 'silent' }), { reuseRunning: true, create: false });
  const stopOnSignal = stopEmbeddedOnSignal(embedded);
  const db = new Database({ url, poolSize: 4, statementTimeoutMilliseconds: 600_000, applicationName: 'tally-cli' });
  try {
    await assertSchemaCurrent(db);
    return await work(db);
  } finally {
    await db.close();
    stopOnSignal.dispose();
    await embedded?.stop();
  }
}

/**
 * The embedded server runs in a session of its own, so a Ctrl-C reaches only this process: stop
 * the server before exiting (130 for SIGINT, 143 for SIGTERM, as a shell reports them).
 */
function stopEmbeddedOnSignal(embedded: EmbeddedDatabase | undefined): { dispose(): void } {
  if (embedded === undefined) return { dispose: () => undefined };
  const handlers = (['SIGINT', 'SIGTERM'] as const).map((signal) => {
    const handler = (): void => {
      process.stderr.write(`tally: ${signal}: stopping the embedded database\n`);
      embedded.stop().then(
        () => process.exit(signal === 'SIGINT' ? 130 : 143),
        (error: unknown) => {
          process.stderr.write(`tally: stopping the embedded database failed: ${(error as Error).message}\n`);
          process.exit(exitCode.failed);
        },
      );
    };
    process.once(signal, handler);
    return [signal, handler] as const;
  });
  return { dispose: () => handlers.forEach(([signal, handler]) => process.off(signal, handler)) };
}

/**
 * Progress of long work on stderr: a bar on a terminal; elsewhere (a pipe, a log file, CI),
 * where a bar draws nothing, one line per step with the time since the start.
 */
function progressOnStderr(label: string): { update: (done: number, total: number, step: string) => void; stop: () => void } {
  const started = Date.now();
  if (process.stderr.isTTY !== true) {
    process.stderr.write(`${label}...\n`);
    return {
      update: (done, total, step) => process.stderr.write(`${label}: ${done}/${total} ${step} done (${Date.now() - started} ms)\n`),
      stop: () => undefined,
    };
  }
  const bar = new SingleBar({ stream: process.stderr, format: `${label} [{bar}] {value}/{total} {step}`, hideCursor: true });
  bar.start(1, 0, { step: '' });
  return {
    update: (done, total, step) => {
      bar.setTotal(total);
      bar.update(done, { step });
      bar.render();
    },
    stop: () => bar.stop(),
  };
}

const print = (value: unknown): void => {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
};

const positiveInteger = (text: string): number => {
  const value = Number(text);
  if (!/^[0-9]+$/.test(text) || !Number.isSafeInteger(value) || value <= 0)
    throw new InvalidArgumentError('a positive whole number of credits');
  return value;
};

program
  .command('start')
  .description('run the API, webhook intake, worker and operations loop in one process')
  .action(async () => {
    const config = loadConfig();
    // Signals are taken from the first moment: one that arrives while the database starts
    // stops Tally as soon as it is up, rather than killing the process and leaving the
    // embedded server (in a session of its own) running.
    let tally: Tally | undefined;
    let stopping: string | undefined;
    const stop = (reason: string): void => {
      if (stopping !== undefined) return;
      stopping = reason;
      if (tally !== undefined) shutDown(tally, reason);
    };
    process.on('SIGINT', () => stop('SIGINT'));
    process.on('SIGTERM', () => stop('SIGTERM'));
    watchNpmParent(stop);
    tally = await startTally(config);
    process.stdout.write(startBanner(tally));
    if (stopping !== undefined) shutDown(tally, stopping);
  });

function startBanner(tally: Tally): string {
  const lines = [`Tally ${version} listening on ${tally.url}`];
  if (tally.keys.source === 'data-folder' && tally.keys.generated) {
    // A key from the environment is the operator's: named, never printed.
    const { fromEnvironment } = tally.keys;
    lines.push(
      `Keys generated for ${tally.dataDirectory}/keys.json (printed this once):`,
      `  app key:   ${fromEnvironment.apiKey ? 'TALLY_API_KEY, from the environment' : tally.keys.apiKey}`,
      `  admin key: ${fromEnvironment.adminKey ? 'TALLY_ADMIN_KEY, from the environment' : tally.keys.adminKey}`,
    );
  } else if (tally.keys.source === 'data-folder') {
    lines.push(`Keys: kept in ${tally.dataDirectory}/keys.json (app key: apiKey, admin key: adminKey)`);
  } else {
    lines.push('Keys: TALLY_API_KEY and TALLY_ADMIN_KEY from the environment');
  }
  // One write, so that whoever waits for the first line also has the keys.
  return `${lines.join('\n')}\n`;
}

/**
 * Stops intake, drains, stops the workers, closes the pool, then stops the embedded database;
 * exits 0 when clean, 1 when it failed or did not finish within shutdownSecondsMax.
 */
function shutDown(tally: Tally, reason: string): void {
  tally.logger.info({ reason }, 'shutting down');
  // Not unref'd: it keeps the process alive until one of the two exits below.
  const deadline = setTimeout(() => {
    // An embedded database is stopped on the way out (db/embedded.ts asks it for a fast shutdown).
    tally.logger.error({ reason }, `shutdown did not finish within ${shutdownSecondsMax} s; exiting anyway`);
    process.exit(exitCode.failed);
  }, shutdownSecondsMax * 1000);
  tally.close().then(
    () => {
      clearTimeout(deadline);
      process.exit(0);
    },
    (error: unknown) => {
      clearTimeout(deadline);
      tally.logger.error({ err: error }, 'shutdown failed');
      process.exit(exitCode.failed);
    },
  );
}

/**
 * Run by npm (`npm start`, `npx tally start`), Tally sits under a shell that npm signals: the
 * shell dies of a SIGTERM without passing it on, and Tally would be left running with nobody
 * to stop it. So under npm, Tally stops when the process that started it is gone. (Started any
 * other way, by a supervisor or with nohup, the parent's end means nothing and is not watched.)
 */
function watchNpmParent(stop: (reason: string) => void): void {
  if (process.env.npm_lifecycle_event === undefined && process.env.npm_command === undefined) return;
  const parent = process.ppid;
  const timer = setInterval(() => {
    if (process.ppid !== parent) stop('the npm process that started Tally is gone');
  }, parentCheckMilliseconds);
  timer.unref();
}
const parentCheckMilliseconds = 250;

program
  .command('migrate')
  .description('apply pending database migrations and exit')
  .action(async () => {
    const config = loadConfig();
    const { url, embedded } = await openDatabase(config, pino({ level: 'silent' }), { reuseRunning: true });
    const stopOnSignal = stopEmbeddedOnSignal(embedded);
    try {
      const applied = await migrate(url, (line) => process.stdout.write(`${line}\n`));
      process.stdout.write(applied.length === 0 ? 'database is up to date\n' : `applied ${applied.length} migration(s)\n`);
    } finally {
      stopOnSignal.dispose();
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
  .requiredOption(
    '--key <key>',
    'idempotency key, e.g. the ticket id: the same key grants once, so running the command again never grants twice',
  )
  .option('--expires-at <time>', 'ISO 8601 expiry')
  .action(
    async (account: string, amount: number, options: { reason: string; source: 'admin' | 'promo'; key: string; expiresAt?: string }) => {
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
          idempotency_key: options.key,
          priority: 0,
          expires_at: options.expiresAt,
        });
        if (outcome.status >= 300) throw refusalError(outcome.status, outcome.body);
        print(outcome.body);
      });
    },
  );

/** A refusal the ledger answered, as the TallyError of its code; a code outside the catalog, or with another status, is a bug. */
function refusalError(status: number, body: Record<string, unknown>): TallyError {
  const code = (body.error as { code?: unknown } | undefined)?.code;
  if (!isErrorCode(code) || errorStatuses[code] !== status) {
    throw new InvariantError(`the ledger answered ${status} with an error outside the catalog: ${JSON.stringify(body)}`);
  }
  return new TallyError(code, errorStatuses[code], JSON.stringify(body));
}

program
  .command('reconcile')
  .description('check that balances, grants, periods and holds agree (and with Stripe); exit 4 on findings')
  .option('--stripe', 'also check the last 30 days of paid invoices and refunds at Stripe')
  .option('--json', 'print the whole report as JSON')
  .action(async (options: { stripe?: boolean; json?: boolean }) => {
    const config = loadConfig();
    const catalog = loadCatalog(config.plansPath);
    const gateway =
      config.stripeSecretKey === undefined
        ? undefined
        : new StripeGateway({ secretKey: config.stripeSecretKey, apiBase: config.stripeApiBase });
    const findings = await withDatabase(async (db) => {
      const progress = progressOnStderr('reconciling');
      const report = await reconcile(db, {
        trigger: 'cli',
        stripe: options.stripe === true,
        gateway,
        catalog,
        onProgress: progress.update,
      }).finally(() => progress.stop());
      if (options.json === true) print(report);
      else {
        process.stdout.write(
          `reconciliation run ${report.run_id}: ${report.summary.accounts} accounts, ${report.summary.entries} entries, ${report.finding_count} finding(s) in ${report.summary.duration_ms} ms\n`,
        );
        for (const finding of report.findings) {
          process.stdout.write(
            `  ${finding.check}  ${finding.account_id ?? '-'}  ${finding.message}${finding.entry_ids.length > 0 ? `  [${finding.entry_ids.join(' ')}]` : ''}\n`,
          );
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
    const gateway =
      config.stripeSecretKey === undefined
        ? undefined
        : new StripeGateway({ secretKey: config.stripeSecretKey, apiBase: config.stripeApiBase });
    await withDatabase(async (db) => {
      const worker = new WebhookWorker(
        db,
        catalog,
        await loadClaimHasher(db, config.fingerprintSecret),
        alertPort(catalog),
        gateway,
        pino({ level: 'warn' }),
        defaultWorkerOptions,
      );
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

// `start` keeps serving after its action returns; every other command ends with its own code
// (the embedded server's pipes would otherwise keep the process alive).
let serving = false;
program.hook('preAction', (_program, command) => {
  serving = command.name() === 'start';
});

try {
  await program.parseAsync(process.argv);
  if (!serving) process.exit(process.exitCode ?? 0);
} catch (error) {
  if (error instanceof CommanderError) process.exit(error.exitCode === 0 ? 0 : exitCode.usage);
  if (
    error instanceof ConfigError ||
    error instanceof CatalogError ||
    error instanceof EmbeddedDatabaseError ||
    error instanceof SchemaNotCurrentError
  ) {
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
