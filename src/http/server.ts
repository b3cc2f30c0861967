import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import { z } from 'zod';
import Fastify, { LogController, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Database } from '../db/database.js';
import type { DestinationPolicy } from '../events/destinations.js';
import { pendingMigrations } from '../db/migrate.js';
import type { Ledger } from '../ledger/ledger.js';
import type { RateCards } from '../pricing/rate-cards.js';
import { UsageBatcher } from '../ledger/usage-batcher.js';
import type { Metrics } from '../ops/metrics.js';
import { KeyChecker, type Keys } from './auth.js';
import { logRedaction } from '../ops/logging.js';
import { invalidRequest } from '../errors.js';
import { renderError } from './errors.js';
import { buildOpenApi } from './openapi.js';
import { defaultRateLimits, registerRateLimits, type RateLimitSettings } from './rate-limits.js';
import { answer } from './responses.js';
import { bodyLimitLargeBytes, defineRoute, registerRoutes, type RouteDefinition } from './route.js';
import { dashboardRoutes } from './routes/dashboard-routes.js';
import { eventRoutes } from './routes/event-routes.js';
import { ledgerRoutes } from './routes/ledger-routes.js';
import { pricingRoutes } from './routes/pricing-routes.js';
import { topUpRoutes } from './routes/top-up-routes.js';
import { operationsRoutes, type OperationsRouteDependencies } from './routes/ops-routes.js';
import { stripeRoutes, webhookRoute, type StripeRouteDependencies } from './routes/stripe-routes.js';

/**
 * Time and size limits of the HTTP server, so that slow or idle clients cannot hold its
 * connections: a request (headers and body) must arrive within requestTimeoutMilliseconds, a
 * connection idle that long is closed, and past connectionCountMax new connections are refused.
 */
export interface HttpLimits {
  requestTimeoutMilliseconds: number;
  headersTimeoutMilliseconds: number;
  connectionIdleTimeoutMilliseconds: number;
  keepAliveTimeoutMilliseconds: number;
  connectionCountMax: number;
}

// Keep-alive outlasts the 60 s idle timeout of common proxies and load balancers, so that the
// proxy, not Tally, closes an idle connection: otherwise it may send a request on a connection
// Tally is closing, and answer its client 502.
export const defaultHttpLimits: HttpLimits = {
  requestTimeoutMilliseconds: 30_000,
  headersTimeoutMilliseconds: 10_000,
  connectionIdleTimeoutMilliseconds: 65_000,
  keepAliveTimeoutMilliseconds: 61_000,
  connectionCountMax: 1024,
};

/** Account ids are up to 128 characters (SPEC); Stripe's ids up to 255. Longer segments are 414. */
export const pathParameterLengthMax = 255;
// Few batches in flight is what makes batches form: spends arriving meanwhile queue up and share
// the next commit. Four keeps two cores busy without spreading a hot account over many commits.
export const usageBatchesConcurrentMax = 4;

export interface ServerOptions {
  db: Database;
  ledger: Ledger;
  rateCards: RateCards;
  metrics: Metrics;
  keys: Keys;
  logLevel: string;
  httpLimits?: Partial<HttpLimits>;
  rateLimits?: Partial<RateLimitSettings>;
  version: string;
  stripe: StripeRouteDependencies;
  operations: OperationsRouteDependencies;
  /** Which hosts the app's event endpoints may name. */
  eventDestinations: DestinationPolicy;
  /** The time of top-ups started by a setting; the database's clock when undefined. */
  clock?: (() => Date) | undefined;
}

/**
 * A URL as logs show it: query strings of trial-eligibility carry an email and a device
 * fingerprint (the GET kept for compatibility), so they never reach a log line.
 */
/**
 * The deepest nesting a JSON body may have. Tally's own bodies nest four levels at most (a
 * batch's event's metadata, a rate card's meter's dimension); a body nested thousands deep is
 * refused before it is parsed, since walking it later overflows the stack.
 */
const jsonDepthMax = 32;

/** Whether `text` opens more than `limit` arrays and objects inside one another, outside strings. */
function nestingDepthOver(text: string, limit: number): boolean {
  let depth = 0;
  let inString = false;
  for (let index = 0; index < text.length; index += 1) {
    const code = text.charCodeAt(index);
    if (inString) {
      if (code === 0x5c)
        index += 1; // a backslash escapes the next character
      else if (code === 0x22) inString = false;
    } else if (code === 0x22) inString = true;
    else if (code === 0x5b || code === 0x7b) {
      depth += 1;
      if (depth > limit) return true;
    } else if (code === 0x5d || code === 0x7d) depth -= 1;
  }
  return false;
}

/**
 * The answer to a request Node refused before Fastify saw it whole: 408 request_timeout for one
 * whose headers and body did not arrive within the request timeout (a body that stalls, or
 * trickles), 400 invalid_request for one that is not HTTP. Then the connection is closed.
 */
function answerClientError(error: Error & { code?: string }, socket: Duplex, requestTimeoutMilliseconds: number): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const timedOut = error.code === 'ERR_HTTP_REQUEST_TIMEOUT';
  const status = timedOut ? 408 : 400;
  const body = JSON.stringify({
    error: timedOut
      ? {
          code: 'request_timeout',
          message: `the request (headers and body) did not arrive within ${requestTimeoutMilliseconds / 1000} s; nothing was done`,
        }
      : { code: 'invalid_request', message: 'request: not a well-formed HTTP request', field: 'request' },
  });
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

export function redactQuery(url: string): string {
  const query = url.indexOf('?');
  if (query < 0 || !url.slice(0, query).endsWith('/trial-eligibility')) return url;
  return `${url.slice(0, query)}?[redacted]`;
}

export async function buildServer(options: ServerOptions): Promise<FastifyInstance> {
  const limits = { ...defaultHttpLimits, ...options.httpLimits };
  const app = Fastify({
    bodyLimit: bodyLimitLargeBytes,
    requestTimeout: limits.requestTimeoutMilliseconds,
    connectionTimeout: limits.connectionIdleTimeoutMilliseconds,
    keepAliveTimeout: limits.keepAliveTimeoutMilliseconds,
    // Node checks request timeouts on this interval (30 s by default); a tighter one cuts a
    // slow client off close to its deadline.
    http: {
      headersTimeout: limits.headersTimeoutMilliseconds,
      connectionsCheckingInterval: Math.min(1000, limits.requestTimeoutMilliseconds),
    },
    routerOptions: { maxParamLength: pathParameterLengthMax },
    // Errors of the router itself (a URL that cannot be decoded, a segment too long) get the
    // product's error shape like every other error.
    frameworkErrors: (error, request, reply) => renderError(error, request, reply as FastifyReply),
    // Node's own refusals of a connection (a request past its timeout, a malformed request) are
    // written straight to the socket; they get the product's error shape too.
    clientErrorHandler: (error, socket) => answerClientError(error, socket, limits.requestTimeoutMilliseconds),
    logger: {
      level: options.logLevel,
      redact: logRedaction,
      serializers: { req: (request) => ({ method: request.method, url: redactQuery(request.url), remoteAddress: request.ip }) },
    },
    // One log line per request only when debugging; metrics count every request anyway.
    logController: new LogController({ disableRequestLogging: options.logLevel !== 'debug' && options.logLevel !== 'trace' }),
  });
  // JSON in, JSON out (SPEC): a text body is 415 like any other non-JSON body, not a string
  // that fails validation later.
  app.removeContentTypeParser('text/plain');
  const defaultJsonParser = app.getDefaultJsonParser('error', 'error');
  // An empty JSON body (a bare POST .../void) reads as no body rather than as an error.
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') {
      done(null, undefined);
      return;
    }
    const text = body.toString();
    if (nestingDepthOver(text, jsonDepthMax)) {
      done(invalidRequest('body', `nested deeper than ${jsonDepthMax} levels`), undefined);
      return;
    }
    defaultJsonParser(request, text, done);
  });
  app.server.maxConnections = limits.connectionCountMax;
  app.decorateRequest('caller', 'anonymous');
  app.setErrorHandler(renderError);
  // Every route's path as a pattern, to tell an unknown path (404) from a known one asked with
  // another method (405).
  const knownPaths: { pattern: RegExp; method: string }[] = [];
  app.addHook('onRoute', (route) => {
    const source = route.url
      .replace(/[.+?^${}()|[\]\\]/g, '\\$&')
      .replace(/:[A-Za-z_]+/g, '[^/]+')
      .replace(/\*/g, '.*');
    for (const method of [route.method].flat()) knownPaths.push({ pattern: new RegExp(`^${source}$`), method });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const allowed = [...new Set(knownPaths.filter((known) => known.pattern.test(path)).map((known) => known.method))];
    if (allowed.length > 0) {
      return reply
        .code(405)
        .header('allow', allowed.join(', '))
        .send({
          error: { code: 'method_not_allowed', message: `${request.method} is not allowed here; use ${allowed.join(' or ')}`, allowed },
        });
    }
    return reply.code(404).send({ error: { code: 'not_found', message: 'no such route' } });
  });
  // Answers are per caller and often personal: never cached, and never sniffed into HTML. The
  // API explorer at /docs is a page of its own: never framed by another site (its CSP comes
  // from swagger-ui's staticCSP below).
  app.addHook('onSend', async (request, reply) => {
    void reply.header('x-content-type-options', 'nosniff');
    void reply.header('cache-control', 'no-store');
    if (request.url.startsWith('/docs')) void reply.header('x-frame-options', 'DENY');
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    options.metrics.requests.inc({ route, method: request.method, status: String(reply.statusCode) });
    options.metrics.requestSeconds.observe({ route }, reply.elapsedTime / 1000);
  });

  const limiters = await registerRateLimits(app, { ...defaultRateLimits, ...options.rateLimits });
  const usageBatcher = new UsageBatcher(options.ledger, usageBatchesConcurrentMax, (spends) =>
    options.metrics.usageBatchSpends.observe(spends),
  );
  // A spend whose client hung up is still written (or not) as a whole; closing waits for the
  // spends the batcher holds, so that the pool is never closed under them.
  app.addHook('onClose', async () => usageBatcher.idle());
  const hashDevice = (fingerprint: string) => options.stripe.hasher.hash('device', fingerprint);
  const routes = [
    ...ledgerRoutes(options.ledger, usageBatcher, hashDevice, options.metrics),
    ...pricingRoutes(options.rateCards),
    ...stripeRoutes(options.stripe, limiters),
    ...operationsRoutes(options.operations),
    ...dashboardRoutes({ db: options.db, gateway: options.operations.gateway, plans: options.stripe.catalog.plans, clock: options.clock }),
    ...eventRoutes(options.db, options.eventDestinations),
    ...topUpRoutes({ db: options.db, catalog: options.stripe.catalog, gateway: options.stripe.gateway, clock: options.clock }),
    ...healthRoutes(options),
  ];
  const rawBodyRoutes = [webhookRoute(options.stripe, limiters)];
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
      responses: { 200: { description: 'OpenAPI 3.1', contentType: 'application/json' } },
      handler: async () => ({ status: 200, body: document }),
    }),
  );
  const keys = new KeyChecker(options.keys, limiters.authFailures.count);
  registerRoutes(app, routes, keys);
  // The webhook signature covers the exact bytes Stripe sent, so this scope keeps them raw.
  await app.register(async (scope) => {
    scope.removeContentTypeParser('application/json');
    scope.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_request, body, done) => done(null, body));
    registerRoutes(scope, rawBodyRoutes, keys);
  });
  await app.register(swagger, { mode: 'static', specification: { document: document as never } });
  await app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true });
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
      responses: { 200: answer('the process answers', z.object({ status: z.literal('ok') })) },
      handler: async () => ({ status: 200, body: { status: 'ok' } }),
    }),
    defineRoute({
      method: 'GET',
      url: '/readyz',
      access: 'none',
      tag: 'operations',
      summary: 'Readiness: the database answers and every migration is applied',
      // It answers the database's absence itself, never with database_unavailable.
      database: false,
      responses: {
        200: answer('ready', z.object({ status: z.literal('ready') })),
        503: answer(
          'not ready, and which condition failed',
          z.object({ status: z.literal('unavailable'), reason: z.enum(['database', 'migrations_pending']) }),
        ),
      },
      // Unauthenticated, so it says only which condition failed; the database's own words (host
      // names, user names) go to the log.
      handler: async ({ request }) => {
        try {
          const pending = await pendingMigrations((text) => options.db.pool.query(text));
          if (pending.length > 0) {
            request.log.warn({ pending }, 'readiness: migrations pending');
            return { status: 503, body: { status: 'unavailable', reason: 'migrations_pending' } };
          }
          return { status: 200, body: { status: 'ready' } };
        } catch (error) {
          request.log.warn({ err: error }, 'readiness: the database did not answer');
          return { status: 503, body: { status: 'unavailable', reason: 'database' } };
        }
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/metrics',
      access: 'metrics',
      tag: 'operations',
      summary: 'Prometheus metrics (admin, viewer or metrics key)',
      responses: { 200: { description: 'Prometheus text format', contentType: 'text/plain' } },
      handler: async () => ({
        status: 200,
        body: await options.metrics.registry.metrics(),
        contentType: options.metrics.registry.contentType,
      }),
    }),
  ];
}
