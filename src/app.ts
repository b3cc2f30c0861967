import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { Catalog } from './billing/catalog.js';
import { loadClaimHasher } from './billing/claim-hasher.js';
import { trialGate } from './billing/trials.js';
import type { Database } from './db/database.js';
import type { Keys } from './http/auth.js';
import type { RateLimitSettings } from './http/rate-limits.js';
import { buildServer, type HttpLimits } from './http/server.js';
import { EventDelivery, type DeliveryOptions } from './events/delivery.js';
import { defaultDestinationPolicy, type DestinationPolicy } from './events/destinations.js';
import { TopUpRunner } from './billing/top-up-payer.js';
import { Ledger } from './ledger/ledger.js';
import { RateCards } from './pricing/rate-cards.js';
import { Sweeper } from './ledger/sweeper.js';
import { parseSinks } from './ops/alert-sinks.js';
import { raiseAlert, resolveAlert } from './ops/alerts.js';
import { Metrics } from './ops/metrics.js';
import { alertPort, grantWatcher } from './ops/rules.js';
import { OperationsScheduler } from './ops/scheduler.js';
import { StripeGateway } from './stripe/gateway.js';
import { WebhookIntake } from './webhooks/inbox.js';
import { WebhookWorker, defaultWorkerOptions, type WorkerOptions } from './webhooks/worker.js';

/**
 * The parts of one Tally process, wired together: the ledger, the Stripe gateway and webhook
 * worker, the sweep and the HTTP server. `tally start`, the tests and the bench all assemble
 * Tally here, so they run the same thing.
 */
export interface AssembleOptions {
  db: Database;
  catalog: Catalog;
  keys: Keys;
  logger: Logger;
  logLevel: string;
  version: string;
  stripeSecretKey?: string | undefined;
  stripeApiBase?: string | undefined;
  stripeBreakerHalfOpenAfterMilliseconds?: number;
  stripeTimeoutMilliseconds?: number;
  webhookSecrets: string[];
  fingerprintSecret?: string | undefined;
  checkoutUrlHosts?: string[];
  alertWebhookUrls?: string[];
  pagerDutyRoutingKey?: string | undefined;
  alertRetryBaseSeconds?: number;
  operationsIntervalSeconds?: number;
  reconcileIntervalHours?: number;
  workerOptions?: Partial<WorkerOptions>;
  /** Group commit of the webhook intake (the bench compares settings; default: inbox.ts's). */
  intakeOptions?: { batchSizeMax?: number; concurrentBatchesMax?: number };
  /** Delivery of events to the app's endpoints (tests shorten its interval and timeouts). */
  eventDeliveryOptions?: Partial<DeliveryOptions>;
  /** Which hosts event endpoints may name (TALLY_EVENTS_ALLOW_PRIVATE), and the resolver (tests hand in theirs). */
  eventDestinations?: Partial<DestinationPolicy>;
  sweepIntervalSeconds: number;
  httpLimits?: Partial<HttpLimits>;
  rateLimits?: Partial<RateLimitSettings>;
  /** The time for expiry decisions; undefined means the database's clock (tests move it). */
  clock?: () => Date;
}

export interface Assembled {
  app: FastifyInstance;
  ledger: Ledger;
  rateCards: RateCards;
  worker: WebhookWorker;
  /** Webhook intake: verified deliveries stored with group commit. */
  intake: WebhookIntake;
  eventDelivery: EventDelivery;
  /** Pays pending auto top-ups; undefined without Stripe. */
  topUps: TopUpRunner | undefined;
  sweeper: Sweeper;
  gateway: StripeGateway | undefined;
  metrics: Metrics;
  operations: OperationsScheduler;
  /** Starts the background work: the webhook worker, the sweep, event delivery and auto top-up. */
  startBackground(): void;
  /** Stops intake, then the background work; the pool is the caller's to close. */
  close(): Promise<void>;
}

export async function assemble(options: AssembleOptions): Promise<Assembled> {
  const { db, catalog, logger } = options;
  // Below ops/, alerts are raised through this port (ports/alerts.ts), never by importing ops/.
  const alerts = alertPort(catalog);
  const ledger = new Ledger(db, {
    clock: options.clock,
    adjustmentCreditsMax: catalog.limits.admin_adjustment_credits_max,
    grantCreditsMax: catalog.limits.admin_grant_credits_max,
    meters: catalog.meters,
    watchGrant: grantWatcher(db.pool, catalog, (error, grant) =>
      logger.error({ err: error, grant }, 'could not check a grant against its plan'),
    ),
  });
  // The catalog's rate cards are in the database before the first spend can be priced: a card
  // whose catalog rates changed since the last start gets a new version, effective now.
  const rateCards = new RateCards(db, catalog.meters, options.clock);
  for (const version of await rateCards.syncCatalog(catalog)) {
    logger.info({ rateCard: version.id, version: version.version }, 'published the catalog rates of a rate card');
  }
  const gateway =
    options.stripeSecretKey === undefined
      ? undefined
      : new StripeGateway({
          secretKey: options.stripeSecretKey,
          apiBase: options.stripeApiBase,
          halfOpenAfterMilliseconds: options.stripeBreakerHalfOpenAfterMilliseconds,
          timeoutMilliseconds: options.stripeTimeoutMilliseconds,
        });
  const metrics = new Metrics(db, () => gateway?.status() ?? { state: 'closed', failures: 0 });
  const hasher = await loadClaimHasher(db, options.fingerprintSecret);
  if (options.fingerprintSecret === undefined) {
    logger.warn(
      'TALLY_FINGERPRINT_SECRET is not set: trial claims and erasure pseudonyms are keyed with a secret kept in the database, beside the hashes; fine for development, required with NODE_ENV=production',
    );
  }
  const worker = new WebhookWorker(
    db,
    catalog,
    hasher,
    alerts,
    gateway,
    logger,
    { ...defaultWorkerOptions, ...options.workerOptions, clock: options.clock },
    (type, outcome, lagSeconds) => {
      metrics.webhookEvents.inc({ type, outcome });
      if (lagSeconds !== undefined) metrics.webhookLagSeconds.observe(lagSeconds);
    },
  );
  const intake = new WebhookIntake(db, {
    ...options.intakeOptions,
    onBatchError: (error, batchSize) =>
      logger.warn({ err: error, batchSize }, 'a webhook intake batch failed; its events are stored one by one'),
  });
  const stripe = {
    db,
    catalog,
    gateway,
    worker,
    intake,
    webhookSecrets: options.webhookSecrets,
    trials: trialGate(db, hasher),
    hasher,
    checkoutUrlHosts: options.checkoutUrlHosts,
  };
  const eventDestinations = { ...defaultDestinationPolicy, ...options.eventDestinations };
  const app = await buildServer({
    db,
    ledger,
    rateCards,
    metrics,
    keys: options.keys,
    logLevel: options.logLevel,
    version: options.version,
    stripe,
    operations: { db, catalog, gateway, digest: (purpose, value) => hasher.digest(purpose, value) },
    eventDestinations,
    httpLimits: options.httpLimits,
    rateLimits: options.rateLimits,
    clock: options.clock,
  });
  if (gateway !== undefined) {
    gateway.onOpen = (status) => {
      raiseAlert(db.pool, {
        kind: 'stripe_breaker_open',
        key: 'stripe_breaker_open',
        severity: 'critical',
        message: `Stripe circuit breaker opened after ${status.failures} consecutive failures`,
        details: { ...status },
      }).catch((error: unknown) => logger.error({ err: error }, 'could not record the breaker alert'));
    };
    gateway.onKeyRefused = (details) => {
      logger.error(details, 'Stripe refused the secret key');
      raiseAlert(db.pool, {
        kind: 'stripe_key_refused',
        key: 'stripe_key_refused',
        severity: 'critical',
        message: `Stripe refused the secret key (HTTP ${details.status} on ${details.call}): check STRIPE_SECRET_KEY, it may be revoked or wrong`,
        details: { ...details },
      }).catch((error: unknown) => logger.error({ err: error }, 'could not record the Stripe key alert'));
    };
    // Breakers are per process: the first to close again resolves the alert they share.
    gateway.onClose = () => {
      resolveAlert(db.pool, 'stripe_breaker_open').catch((error: unknown) =>
        logger.error({ err: error }, 'could not resolve the breaker alert'),
      );
    };
  }
  const operations = new OperationsScheduler(db, catalog, gateway, logger, {
    intervalSeconds: options.operationsIntervalSeconds ?? 30,
    reconcileIntervalHours: options.reconcileIntervalHours ?? 24,
    delivery: {
      sinks: parseSinks(options.alertWebhookUrls ?? []),
      pagerDutyRoutingKey: options.pagerDutyRoutingKey,
      retryBaseSeconds: options.alertRetryBaseSeconds ?? 30,
      retryDelaySecondsMax: 3600,
    },
  });
  const eventDelivery = new EventDelivery(db, logger, alerts, {
    ...options.eventDeliveryOptions,
    destinations: eventDestinations,
    clock: options.clock,
  });
  const topUps = gateway === undefined ? undefined : new TopUpRunner({ db, catalog, gateway, clock: options.clock }, logger);
  const sweeper = new Sweeper(ledger, logger, options.sweepIntervalSeconds, (alert) => alerts.raise(db.pool, alert));
  return {
    app,
    ledger,
    rateCards,
    worker,
    intake,
    eventDelivery,
    topUps,
    sweeper,
    gateway,
    metrics,
    operations,
    startBackground() {
      sweeper.start();
      operations.start();
      worker.start();
      worker.nudge();
      eventDelivery.start();
      topUps?.start();
    },
    async close() {
      await app.close();
      await worker.stop();
      await sweeper.stop();
      await operations.stop();
      await eventDelivery.stop();
      await topUps?.stop();
    },
  };
}
