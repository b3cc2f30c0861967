import { z } from 'zod';
import { namedSchemas } from './entities.js';
import {
  bodySchemaOf,
  errorCatalog,
  errorBodySchema,
  errorSchemaName,
  mergeResponses,
  refusals,
  type ErrorCode,
  type Responses,
} from './responses.js';
import { bodyLimitFor, type RouteDefinition } from './route.js';

/**
 * The OpenAPI 3.1 description, built from the same route declarations that Fastify serves, so
 * the two cannot drift apart. Bodies and queries are the zod schemas the handlers validate with;
 * answers are the zod schemas each route declares for every status it may give, refusals
 * included, plus those every route of its kind shares (commonResponses). Shared objects and
 * every error code's body are listed once under components.schemas.
 */
const componentPath = '#/components/schemas/';

export function buildOpenApi(routes: RouteDefinition[], version: string): Record<string, unknown> {
  const visible = routes.filter((candidate) => candidate.hidden !== true);
  const { components, responsesOf } = describeAnswers(visible);
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of visible) {
    const path = route.url.replace(/:([a-z_]+)/g, '{$1}');
    const operation: Record<string, unknown> = {
      summary: route.summary,
      tags: [route.tag],
      parameters: parametersOf(route),
      responses: responsesOf(route),
    };
    if (route.access !== 'none') operation.security = securityOf(route);
    if (route.body !== undefined) {
      operation.requestBody = {
        // A left-out body reads as `{}` (a bare capture takes the whole hold).
        required: !/without a body/i.test(route.summary),
        content: { 'application/json': { schema: inputSchema(route.body) } },
      };
    }
    paths[path] = { ...paths[path], [route.method.toLowerCase()]: operation };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'Tally',
      version,
      description:
        'Credits ledger and Stripe billing engine. Errors are {"error": {"code", "message", ...details}}, Fastify\'s own included: ' +
        'unknown route 404 not_found, wrong method 405 method_not_allowed (with Allow), non-JSON body 415 unsupported_media_type, ' +
        "body over the call's limit 413 payload_too_large, path segment over 255 characters 414 uri_too_long, a string holding U+0000 " +
        '400 invalid_request naming the field. Amounts are positive safe integers unless stated. A replayed key answers as the first time ' +
        'with replayed: true (in the error object too) and the header Idempotent-Replayed: true; keys are scoped to their account (the same ' +
        'key sent for another account is another request). Answers carry Cache-Control: no-store ' +
        'and X-Content-Type-Options: nosniff. Rate limits answer 429 rate_limited {retry_after_seconds} with Retry-After.',
    },
    components: {
      schemas: components,
      securitySchemes: {
        appKey: { type: 'http', scheme: 'bearer', description: 'TALLY_API_KEY (the admin key also works)' },
        adminKey: { type: 'http', scheme: 'bearer', description: 'TALLY_ADMIN_KEY' },
        viewerKey: {
          type: 'http',
          scheme: 'bearer',
          description:
            'TALLY_VIEWER_KEY: the GETs of the app and admin calls and /metrics, nothing that writes and nothing that answers personal data (403); emails and names it reads are masked',
        },
        metricsKey: { type: 'http', scheme: 'bearer', description: 'TALLY_METRICS_KEY: /metrics only' },
      },
    },
    paths,
  };
}

/**
 * The answers of every route, as OpenAPI response objects, and the named schemas they share.
 * Every body is converted in one pass of zod's converter, each under a temporary id, so that
 * what it shares with others (a Grant, an error code's body) becomes a reference to
 * components.schemas; each route's own bodies are then put back inline.
 */
function describeAnswers(routes: RouteDefinition[]): {
  components: Record<string, unknown>;
  responsesOf: (route: RouteDefinition) => Record<string, unknown>;
} {
  const registry = z.registry<{ id: string; description?: string }>();
  const registered = new Map<z.ZodType, string>();
  const register = (schema: z.ZodType, id: string, description?: string): void => {
    registry.add(schema, description === undefined ? { id } : { id, description });
    registered.set(schema, id);
  };
  for (const { name, schema } of namedSchemas) register(schema, name);
  for (const code of Object.keys(errorCatalog) as ErrorCode[])
    register(errorBodySchema(code), errorSchemaName(code), `${errorCatalog[code].status} ${code}: ${errorCatalog[code].description}`);
  const answers = new Map<RouteDefinition, { responses: Responses; bodies: Map<string, string> }>();
  routes.forEach((route, index) => {
    const responses = mergeResponses(route.responses, commonResponses(route));
    const bodies = new Map<string, string>();
    for (const [status, spec] of Object.entries(responses)) {
      const schema = bodySchemaOf(spec);
      if (schema === undefined) continue;
      if (!registered.has(schema)) register(schema, `answer_${index}_${status}`);
      bodies.set(status, registered.get(schema) ?? '');
    }
    answers.set(route, { responses, bodies });
  });
  const converted = z.toJSONSchema(registry, { io: 'output', uri: (id) => `${componentPath}${id}` }).schemas as Record<
    string,
    Record<string, unknown>
  >;
  for (const schema of Object.values(converted)) {
    delete schema.$schema;
    delete schema.$id;
  }
  const inlineOrReference = (id: string): unknown => (id.startsWith('answer_') ? converted[id] : { $ref: `${componentPath}${id}` });
  const retryAfter = { 'Retry-After': { description: 'seconds to wait before retrying', schema: { type: 'integer' } } };
  const responsesOf = (route: RouteDefinition): Record<string, unknown> => {
    const answer = answers.get(route);
    if (answer === undefined) throw new Error(`${route.method} ${route.url} was not described`);
    return Object.fromEntries(
      Object.entries(answer.responses).map(([status, spec]) => {
        const id = answer.bodies.get(status);
        const content =
          id !== undefined
            ? { 'application/json': { schema: inlineOrReference(id) } }
            : spec.contentType !== undefined
              ? { [spec.contentType]: { schema: { type: 'string' } } }
              : undefined;
        return [
          status,
          {
            description: spec.description,
            ...(status === '429' || status === '503' ? { headers: retryAfter } : {}),
            ...(content === undefined ? {} : { content }),
          },
        ];
      }),
    );
  };
  return { components: Object.fromEntries(Object.entries(converted).filter(([id]) => !id.startsWith('answer_'))), responsesOf };
}

/** Path parameters, and the query's fields from its zod schema. */
function parametersOf(route: RouteDefinition): unknown[] {
  const parameters: unknown[] = [...route.url.matchAll(/:([a-z_]+)/g)].map((match) => ({
    name: match[1],
    in: 'path',
    required: true,
    schema: { type: 'string' },
  }));
  if (route.query !== undefined) {
    const schema = z.toJSONSchema(route.query, { io: 'input', unrepresentable: 'any' }) as {
      properties?: Record<string, unknown>;
      required?: string[];
    };
    for (const [name, property] of Object.entries(schema.properties ?? {})) {
      parameters.push({ name, in: 'query', required: schema.required?.includes(name) ?? false, schema: property });
    }
  }
  return parameters;
}

/** Which keys open a call: the viewer key opens reads but those of personal data; the metrics key /metrics only. */
function securityOf(route: RouteDefinition): Record<string, string[]>[] {
  const keys = route.access === 'app' ? ['appKey', 'adminKey'] : ['adminKey'];
  if (route.method === 'GET' && route.personalData !== true) keys.push('viewerKey');
  if (route.access === 'metrics') keys.push('metricsKey');
  return keys.map((key) => ({ [key]: [] }));
}

function inputSchema(schema: z.ZodType): Record<string, unknown> {
  const converted = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
  delete converted.$schema;
  return converted;
}

/**
 * The answers every call of a kind may give besides its own: refusals of the key (checked
 * before the body is read), of the path and body (size, media type, JSON), a bug, and 503 while
 * the database is away.
 */
export function commonResponses(route: RouteDefinition): Responses {
  const hasParameters = route.url.includes(':');
  const readsBody = route.method !== 'GET';
  const codes: (ErrorCode | [ErrorCode, string])[] = [];
  if (hasParameters || route.query !== undefined || (readsBody && route.rawBody !== true)) codes.push('invalid_request');
  if (route.access !== 'none') {
    codes.push('unauthorized', ['rate_limited', 'too many wrong keys from this address; retry after Retry-After seconds']);
    // Every key opens the app's reads; the viewer key is refused writes, the app key admin calls.
    if (route.access !== 'app' || readsBody || route.personalData === true)
      codes.push([
        'forbidden',
        route.access !== 'app'
          ? 'this call needs the admin key'
          : route.personalData === true
            ? 'the viewer key never reads personal data'
            : 'the viewer key is read-only',
      ]);
  }
  if (readsBody)
    codes.push(['payload_too_large', `the body is over ${bodyLimitFor(route)} bytes`], 'unsupported_media_type', 'request_timeout');
  if (hasParameters) codes.push('uri_too_long');
  codes.push('internal_error');
  if (route.database !== false) codes.push('database_unavailable', 'database_busy');
  return refusals(...codes);
}
