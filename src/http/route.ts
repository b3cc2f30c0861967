import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { z } from 'zod';
import { invalidRequest } from '../errors.js';
import { accountIdSchema } from '../ledger/commands.js';
import type { AccessLevel, Caller, KeyChecker } from './auth.js';
import type { Responses } from './responses.js';

/**
 * A route is declared once, with its access level, body limit and zod schemas; from the
 * declaration come the Fastify route, the key check (before the body is read), the strict
 * validation (nothing runs on a bad request) and the OpenAPI description, answers included.
 * Handlers stay thin: validated input in, an answer out.
 */
export interface Answer {
  status: number;
  body: unknown;
  contentType?: string;
  /** Headers of this answer besides those every answer gets. */
  headers?: Record<string, string>;
}

export interface RouteInput<Body, Query> {
  params: Record<string, string>;
  body: Body;
  query: Query;
  caller: Caller;
  request: FastifyRequest;
  reply: FastifyReply;
}

export interface RouteDefinition<Body = unknown, Query = unknown> {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE';
  url: string;
  access: AccessLevel;
  /** The route answers personal data (an export, an email's trial history, a signed reference): the viewer key is refused it. */
  personalData?: true;
  summary: string;
  tag: string;
  body?: z.ZodType<Body>;
  /** The largest body this route reads; the default fits the route (see bodyLimitFor). */
  bodyLimitBytes?: number;
  query?: z.ZodType<Query>;
  /**
   * What the route itself answers, by status: bodies as zod schemas, refusals by error code.
   * The answers every route of its kind shares (a wrong key, a body too large, the database
   * away) are added by the OpenAPI builder (see commonResponses).
   */
  responses: Responses;
  /** Hidden from the OpenAPI description (the description itself, the docs page). */
  hidden?: boolean;
  /**
   * False for the few calls that never answer database_unavailable: they never touch the
   * database, or (readiness) answer its absence in their own words.
   */
  database?: false;
  /** The body is read as bytes, never parsed as JSON here (the webhook, whose signature covers the bytes). */
  rawBody?: true;
  /** Checks run once the key is accepted and before the body is read (rate limits). */
  beforeBody?: (request: FastifyRequest, caller: Caller) => Promise<void>;
  handler(input: RouteInput<Body, Query>): Promise<Answer>;
}

// Erases the generic parameters so routes of different shapes share one list.
export const defineRoute = <Body, Query>(definition: RouteDefinition<Body, Query>): RouteDefinition =>
  definition as unknown as RouteDefinition;

/**
 * Body limits by what a route reads: a route without a body reads almost nothing; a single
 * operation's body (metadata included) fits in 64 KiB; a batch of 1000 events and Stripe's
 * events get 1 MiB. A body over its route's limit is refused 413 while it arrives.
 */
export const bodyLimitNoBodyBytes = 1024;
export const bodyLimitDefaultBytes = 64 * 1024;
export const bodyLimitLargeBytes = 1024 * 1024;

export const bodyLimitFor = (route: RouteDefinition): number =>
  route.bodyLimitBytes ?? (route.body === undefined ? bodyLimitNoBodyBytes : bodyLimitDefaultBytes);

declare module 'fastify' {
  interface FastifyRequest {
    /** Who presented which key; set by the route's onRequest hook, before the body is read. */
    caller: Caller;
  }
}

/**
 * The first string (or object key) holding U+0000, as a field path. PostgreSQL's text and
 * jsonb cannot store it, so it is refused at the door rather than failing in the database.
 */
export function findNulCharacter(value: unknown, path: string[] = []): string[] | undefined {
  if (typeof value === 'string') return value.includes('\u0000') ? path : undefined;
  if (Array.isArray(value)) {
    for (const [index, item] of value.entries()) {
      const found = findNulCharacter(item, [...path, String(index)]);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (typeof value === 'object' && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      if (key.includes('\u0000')) return [...path, key];
      const found = findNulCharacter(item, [...path, key]);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

const typeNames: Record<string, string> = {
  int: 'an integer',
  number: 'a number',
  string: 'a string',
  boolean: 'true or false',
  object: 'an object',
  array: 'an array',
  record: 'an object',
  null: 'null',
};

const unitsOf: Record<string, string> = { string: ' characters', array: ' items', set: ' items' };

/**
 * What was expected, in words, for one validation issue. Zod's own texts speak JavaScript
 * ("received NaN", ">0"); a client should read what to send instead. Messages written in our
 * schemas (refinements, patterns) are kept as they are.
 */
export function describeIssue(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      return `expected ${typeNames[issue.expected] ?? issue.expected}`;
    case 'too_small': {
      const units = unitsOf[issue.origin] ?? '';
      if (issue.origin === 'string' && Number(issue.minimum) === 1) return 'must not be empty';
      return issue.inclusive === false ? `must be more than ${issue.minimum}${units}` : `must be at least ${issue.minimum}${units}`;
    }
    case 'too_big': {
      const units = unitsOf[issue.origin] ?? '';
      return issue.inclusive === false ? `must be less than ${issue.maximum}${units}` : `must be at most ${issue.maximum}${units}`;
    }
    case 'invalid_value':
      return `must be one of ${issue.values.map((value) => JSON.stringify(value)).join(', ')}`;
    case 'invalid_format': {
      const formats: Record<string, string> = {
        email: 'an email address',
        datetime: 'an ISO 8601 date-time with its offset, as 2030-01-31T12:00:00Z',
        date: 'an ISO 8601 date, as 2030-01-31',
        url: 'a URL',
      };
      const expected = formats[issue.format];
      return expected === undefined ? issue.message : `expected ${expected}`;
    }
    case 'invalid_union':
      return 'expected a string, a number, true, false or null';
    case 'not_multiple_of':
      return `must be a multiple of ${issue.divisor}`;
    default:
      return issue.message;
  }
}

export function parseInput<T>(schema: z.ZodType<T>, value: unknown, prefix: string): T {
  const nul = findNulCharacter(value);
  if (nul !== undefined) throw invalidRequest(fieldName(prefix, nul), 'must not contain the character U+0000');
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (issue === undefined) throw invalidRequest(prefix === '' ? 'body' : prefix, 'invalid');
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    path.push(issue.keys[0] ?? '?');
    throw invalidRequest(fieldName(prefix, path), 'unknown field');
  }
  const missing = issue.code === 'invalid_type' && issue.message.includes('received undefined');
  throw invalidRequest(fieldName(prefix, path), missing ? 'required' : describeIssue(issue));
}

const fieldName = (prefix: string, path: string[]): string => {
  const field = [prefix, ...path].filter((part) => part !== '').join('.');
  return field === '' ? 'body' : field;
};

/** Route parameters are text the database stores or compares; they get the same NUL check as bodies. */
function checkParams(params: Record<string, string>): void {
  const nul = findNulCharacter(params);
  if (nul !== undefined) throw invalidRequest(fieldName('', nul), 'must not contain the character U+0000');
}

/** Answers that repeat a key's first outcome say so in a header too (SPEC). */
function isReplay(body: unknown): boolean {
  if (typeof body !== 'object' || body === null) return false;
  const record = body as { replayed?: unknown; error?: { replayed?: unknown } };
  return record.replayed === true || record.error?.replayed === true;
}

export function registerRoutes(app: FastifyInstance, routes: RouteDefinition[], keys: KeyChecker): void {
  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      bodyLimit: bodyLimitFor(route),
      // The key is checked here, before a byte of the body is read or parsed: an anonymous
      // caller costs a header check, not a JSON parse.
      onRequest: async (request) => {
        request.caller = await keys.authorize(route, request);
        if (route.beforeBody !== undefined) await route.beforeBody(request, request.caller);
      },
      handler: async (request, reply) => {
        const params = request.params as Record<string, string>;
        checkParams(params);
        // A left-out body reads as `{}`, so a bare POST names the first field it misses.
        const body = route.body === undefined ? undefined : parseInput(route.body, request.body ?? {}, '');
        const query = route.query === undefined ? undefined : parseInput(route.query, request.query ?? {}, '');
        const answer = await route.handler({ params, body, query, caller: request.caller, request, reply });
        if (answer.contentType !== undefined) reply.type(answer.contentType);
        if (answer.headers !== undefined) void reply.headers(answer.headers);
        if (isReplay(answer.body)) void reply.header('idempotent-replayed', 'true');
        return reply.code(answer.status).send(answer.body);
      },
    });
  }
}

/** The account id of a route's `:id` segment, checked against SPEC's characters (400 naming `id`). */
export const accountIdParam = (params: Record<string, string>): string => parseInput(accountIdSchema, params.id, 'id');
