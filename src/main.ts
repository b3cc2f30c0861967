import type { FastifyInstance } from 'fastify';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import pg from 'pg';
import { pino, type Logger } from 'pino';
import { assemble } from './app.js';
import { loadCatalog, type Catalog } from './billing/catalog.js';
import { ConfigError, resolveApiKeys, type ApiKeys, type Config } from './config.js';
import { Database } from './db/database.js';
import { logRedaction } from './ops/logging.js';
import { packageRoot } from './package-root.js';
import { clusterDirectoryOf, rootClusterRoot, startEmbeddedDatabase, type EmbeddedDatabase } from './db/embedded.js';
import { migrate } from './db/migrate.js';

/**
 * Start: config → database → migrations → server + worker, and the way back down. Shutdown
 * stops intake, lets requests in flight finish, stops the worker, closes the pool, then stops
 * the embedded database, within shutdownSecondsMax (`tally start` exits anyway after it).
 */
export const version: string = (JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as { version: string }).version;

/**
 * How long a shutdown may take before Tally exits anyway: a request stuck behind a lock, or a
 * call to Stripe or to an endpoint that hangs, must not keep a process that was told to stop.
 * Below the shortest common grace period before a supervisor's SIGKILL (`docker stop`: 10 s),
 * so that Tally ends on its own, says so in its log, and stops its embedded database. Work cut
 * off wrote nothing it did not commit, and its client retries with the same key.
 */
export const shutdownSecondsMax = 8;

export interface Tally {
  app: FastifyInstance;
  url: string;
  keys: ApiKeys;
  catalog: Catalog;
  dataDirectory: string;
  db: Database;
  logger: Logger;
  close(): Promise<void>;
}

/**
 * The database: DATABASE_URL, or the embedded one in the data folder. A running `tally start`
 * leaves the embedded server's address in the data folder, so that CLI commands can use that
 * server (reuseRunning) instead of starting a second one on the same data.
 */
export async function openDatabase(
  config: Config,
  logger: Logger,
  options: { reuseRunning?: boolean; create?: boolean } = {},
): Promise<{ url: string; embedded: EmbeddedDatabase | undefined }> {
  if (config.databaseUrl !== undefined) return { url: config.databaseUrl, embedded: undefined };
  const addressFile = join(config.dataDirectory, 'postgres-url');
  if (options.reuseRunning === true && existsSync(addressFile)) {
    const url = readFileSync(addressFile, 'utf8').trim();
    if (await answers(url)) return { url, embedded: undefined };
  }
  if (options.create === false && !existsSync(join(clusterDirectoryOf(config.dataDirectory), 'PG_VERSION'))) {
    throw new ConfigError(
      `no Tally data in ${resolve(config.dataDirectory)}: set TALLY_DATA_DIR to the data folder of your Tally (./.tally where \`npm start\` ran) or DATABASE_URL to its database`,
    );
  }
  logger.info({ dataDirectory: config.dataDirectory }, 'no DATABASE_URL: starting embedded PostgreSQL');
  const embedded = await startEmbeddedDatabase({
    dataDirectory: config.dataDirectory,
    databaseName: 'tally',
    // A clone in root's home: the default data folder's cluster goes where `postgres` can reach it.
    reachableClusterRoot: config.dataDirectoryDefaulted ? rootClusterRoot : undefined,
    log: (line) => logger.debug({ postgres: line.trim() }, 'embedded postgres'),
  });
  const cluster = clusterDirectoryOf(config.dataDirectory);
  if (cluster !== join(config.dataDirectory, 'postgres')) {
    logger.info(
      { cluster },
      `the 'postgres' user cannot reach ${config.dataDirectory}: its database files live in ${cluster} (set TALLY_DATA_DIR to choose another folder)`,
    );
  }
  writeFileSync(addressFile, embedded.url, { mode: 0o600 });
  return {
    url: embedded.url,
    embedded: {
      url: embedded.url,
      stop: async () => {
        rmSync(addressFile, { force: true });
        await embedded.stop();
      },
    },
  };
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    await client.end();
    return true;
  } catch {
    // Nothing listens there any more (a stale file after a crash): start a server instead.
    return false;
  }
}

/**
 * Refuses a listen address that is taken, before anything is created or migrated: a second
 * Tally started by mistake must not start a database or apply migrations only to fail at the
 * end. (Another program can still take the port in between; listen() then fails as before.)
 */
export async function assertPortFree(port: number, host: string): Promise<void> {
  const probe = createServer();
  await new Promise<void>((free, taken) => {
    probe.once('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'EADDRINUSE')
        taken(
          new ConfigError(
            `PORT ${port} on ${host} is already in use (another Tally, or another program): stop it or set PORT to a free port`,
          ),
        );
      else if (error.code === 'EACCES')
        taken(new ConfigError(`PORT ${port} on ${host} needs privileges this user lacks: set PORT to 1024 or above`));
      else taken(error);
    });
    probe.listen({ port, host, exclusive: true }, () => probe.close(() => free()));
  });
}

export async function startTally(config: Config): Promise<Tally> {
  const logger = pino({ level: config.logLevel, name: 'tally', redact: logRedaction });
  const catalog = loadCatalog(config.plansPath);
  await assertPortFree(config.port, config.host);
  const { url: databaseUrl, embedded } = await openDatabase(config, logger);
  try {
    await migrate(databaseUrl, (line) => logger.info(line));
    // Generated only once the database works, so that keys are never generated by a start that
    // then fails before printing them.
    const keys = resolveApiKeys(config);
    const db = new Database({
      url: databaseUrl,
      poolSize: config.databasePoolSize,
      statementTimeoutMilliseconds: config.statementTimeoutMilliseconds,
      warn: (message) => logger.warn(message),
    });
    const parts = await assemble({
      db,
      catalog,
      keys,
      logger,
      logLevel: config.logLevel,
      version,
      stripeSecretKey: config.stripeSecretKey,
      stripeApiBase: config.stripeApiBase,
      webhookSecrets: config.stripeWebhookSecrets,
      fingerprintSecret: config.fingerprintSecret,
      checkoutUrlHosts: config.checkoutUrlHosts,
      eventDestinations: { allowPrivate: config.eventsAllowPrivate },
      alertWebhookUrls: config.alertWebhookUrls,
      pagerDutyRoutingKey: config.pagerDutyRoutingKey,
      reconcileIntervalHours: config.reconcileIntervalHours,
      sweepIntervalSeconds: config.sweepIntervalSeconds,
      workerOptions: { concurrentEventsMax: config.webhookEventsConcurrentMax },
    });
    const url = await parts.app.listen({ port: config.port, host: config.host });
    parts.startBackground();
    const close = async (): Promise<void> => {
      await parts.close();
      await db.close();
      await embedded?.stop();
    };
    const app = parts.app;
    return { app, url, keys, catalog, dataDirectory: config.dataDirectory, db, logger, close };
  } catch (error) {
    await embedded?.stop();
    throw error;
  }
}
