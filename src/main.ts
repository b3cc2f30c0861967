import type { FastifyInstance } from 'fastify';
import { readFileSync } from 'node:fs';
import { pino, type Logger } from 'pino';
import { assemble } from './app.js';
import { loadCatalog, type Catalog } from './billing/catalog.js';
import { resolveApiKeys, type ApiKeys, type Config } from './config.js';
import { Database } from './db/database.js';
import { logRedaction } from './ops/logging.js';
import { startEmbeddedDatabase, type EmbeddedDatabase } from './db/embedded.js';
import { migrate } from './db/migrate.js';

/**
 * Start: config → database → migrations → server + worker, and the way back down. Shutdown
 * stops intake, lets requests in flight finish, stops the worker, closes the pool, then stops
 * the embedded database.
 */
export const version: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

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

export async function openDatabase(config: Config, logger: Logger): Promise<{ url: string; embedded: EmbeddedDatabase | undefined }> {
  if (config.databaseUrl !== undefined) return { url: config.databaseUrl, embedded: undefined };
  logger.info({ dataDirectory: config.dataDirectory }, 'no DATABASE_URL: starting embedded PostgreSQL');
  const embedded = await startEmbeddedDatabase({
    dataDirectory: config.dataDirectory,
    databaseName: 'tally',
    log: (line) => logger.debug({ postgres: line.trim() }, 'embedded postgres'),
  });
  return { url: embedded.url, embedded };
}

export async function startTally(config: Config): Promise<Tally> {
  const logger = pino({ level: config.logLevel, name: 'tally', redact: logRedaction });
  const catalog = loadCatalog(config.plansPath);
  const keys = resolveApiKeys(config);
  const { url: databaseUrl, embedded } = await openDatabase(config, logger);
  try {
    await migrate(databaseUrl, (line) => logger.info(line));
    const db = new Database({ url: databaseUrl, poolSize: config.databasePoolSize, statementTimeoutMilliseconds: config.statementTimeoutMilliseconds });
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
      alertWebhookUrls: config.alertWebhookUrls,
      pagerDutyRoutingKey: config.pagerDutyRoutingKey,
      reconcileIntervalHours: config.reconcileIntervalHours,
      sweepIntervalSeconds: config.sweepIntervalSeconds,
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
