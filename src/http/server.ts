import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Database } from '../db/database.js';
import { pendingMigrations } from '../db/migrate.js';
import type { Ledger } from '../ledger/ledger.js';
import { UsageBatcher } from '../ledger/usage-batcher.js';
import type { Metrics } from '../ops/metrics.js';
import { KeyChecker } from './auth.js';
import { logRedaction } from '../ops/logging.js';
import { renderError } from './errors.js';
import { buildOpenApi } from './openapi.js';
import { defineRoute, registerRoutes, type RouteDefinition } from './route.js';
import { ledgerRoutes } from './routes/ledger-routes.js';
import { operationsRoutes, type OperationsRouteDependencies } from './routes/ops-routes.js';
import { stripeRoutes, webhookRoute, type StripeRouteDependencies } from './routes/stripe-routes.js';

export const bodyLimitBytes = 1024 * 1024;
// Few batches in flight is what makes batches form: spends arriving meanwhile queue up and share
// the next commit. Four keeps two cores busy without spreading a hot account over many commits.
export const usageBatchesConcurrentMax = 4;

export interface ServerOptions {
  db: Database;
  ledger: Ledger;
  metrics: Metrics;
  keys: { apiKey: string; adminKey: string };
  logLevel: string;
  version: string;
  stripe: StripeRouteDependencies;
  operations: OperationsRouteDependencies;
}

export async function buildServer(options: ServerOptions): Promise<FastifyInstance> {
  const app = Fastify({
    bodyLimit: bodyLimitBytes,
    logger: {
      level: options.logLevel,
      redact: logRedaction,
    },
    // One log line per request only when debugging; metrics count every request anyway.
    logController: new LogController({ disableRequestLogging: options.logLevel !== 'debug' && options.logLevel !== 'trace' }),
  });
  const defaultJsonParser = app.getDefaultJsonParser('error', 'error');
  // An empty JSON body (a bare POST .../void) reads as no body rather than as an error.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') {
      done(null, undefined);
      return;
    }
    defaultJsonParser(request, body.toString(), done);
  });
  app.setErrorHandler(renderError);
  app.setNotFoundHandler((request, reply) => reply.code(404).send({ error: { code: 'not_found', message: `no route ${request.method} ${request.url}` } }));
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    options.metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode) });
    options.metrics.requestSeconds.observe({ route }, reply.elapsedTime / 1000);
  });

  const usageBatcher = new UsageBatcher(options.ledger, usageBatchesConcurrentMax);
  const hashDevice = (fingerprint: string) => options.stripe.hasher.hash('device', fingerprint);
  const routes = [...ledgerRoutes(options.ledger, usageBatcher, hashDevice, options.metrics), ...stripeRoutes(options.stripe), ...operationsRoutes(options.operations), ...healthRoutes(options)];
  const rawBodyRoutes = [webhookRoute(options.stripe)];
  const document = buildOpenApi([...routes, ...rawBodyRoutes], options.version);
  routes.push(
    defineRoute({
      method: 'GET',
      url: '/openapi.json',
      database: false,
      access: 'none',
      tag: 'meta',
      summary: 'This description',
      hidden: true,
      responses: { 200: 'OpenAPI 3.1' },
      handler: async () => ({ status: 200, body: document }),
    }),
  );
  const keys = new KeyChecker(options.keys);
  registerRoutes(app, routes, keys);
  // The webhook signature covers the exact bytes Stripe sent, so this scope keeps them raw.
  await app.register(async (scope) => {
    scope.removeContentTypeParser('application/json');
    scope.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
    registerRoutes(scope, rawBodyRoutes, keys);
  });
  await app.register(swagger, { mode: 'static', specification: { document: document as never } });
  await app.register(swaggerUi, { routePrefix: '/docs' });
  return app;
}

function healthRoutes(options: ServerOptions): RouteDefinition[] {
  return [
    defineRoute({
      method: 'GET',
      url: '/healthz',
      database: false,
      access: 'none',
      tag: 'operations',
      summary: 'Liveness: the process answers',
      responses: { 200: '{status: "ok"}' },
      handler: async () => ({ status: 200, body: { status: 'ok' } }),
    }),
    defineRoute({
      method: 'GET',
      url: '/readyz',
      access: 'none',
      tag: 'operations',
      summary: 'Readiness: the database answers and every migration is applied',
      responses: { 200: '{status: "ready"}', 503: '{status: "unavailable", reason}' },
      handler: async () => {
        try {
          const pending = await pendingMigrations((text) => options.db.pool.query(text));
          if (pending.length > 0) return { status: 503, body: { status: 'unavailable', reason: `migrations pending: ${pending.join(', ')}` } };
          return { status: 200, body: { status: 'ready' } };
        } catch (error) {
          return { status: 503, body: { status: 'unavailable', reason: `database: ${(error as Error).message}` } };
        }
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/metrics',
      access: 'admin',
      tag: 'operations',
      summary: 'Prometheus metrics (admin key)',
      responses: { 200: 'Prometheus text format', 401: 'unauthorized', 403: 'forbidden' },
      handler: async () => ({
        status: 200,
        body: await options.metrics.registry.metrics(),
        contentType: options.metrics.registry.contentType,
      }),
    }),
  ];
}
