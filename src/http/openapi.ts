import { z } from 'zod';
import { bodyLimitFor, type RouteDefinition } from './route.js';

/**
 * The OpenAPI 3.1 description, built from the same route declarations that Fastify serves, so
 * the two cannot drift apart. Bodies and queries are the zod schemas the handlers validate with.
 */
export function buildOpenApi(routes: RouteDefinition[], version: string): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes.filter((candidate) => candidate.hidden !== true)) {
    const path = route.url.replace(/:([a-z_]+)/g, '{$1}');
    const parameters: unknown[] = [...route.url.matchAll(/:([a-z_]+)/g)].map((match) => ({
      name: match[1],
      in: 'path',
      required: true,
      schema: { type: 'string' },
    }));
    if (route.query !== undefined) {
      const schema = z.toJSONSchema(route.query, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, unknown>; required?: string[] };
      for (const [name, property] of Object.entries(schema.properties ?? {})) {
        parameters.push({ name, in: 'query', required: schema.required?.includes(name) ?? false, schema: property });
      }
    }
    const operation: Record<string, unknown> = {
      summary: route.summary,
      tags: [route.tag],
      parameters,
      responses: Object.fromEntries(Object.entries(documentedResponses(route)).map(([status, description]) => [status, { description }])),
    };
    if (route.access !== 'none') operation.security = securityOf(route);
    if (route.body !== undefined) {
      operation.requestBody = {
        // A left-out body reads as `{}` (a bare capture takes the whole hold).
        required: !/without a body/i.test(route.summary),
        content: { 'application/json': { schema: z.toJSONSchema(route.body, { io: 'input', unrepresentable: 'any' }) } },
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
        'body over the call\'s limit 413 payload_too_large, path segment over 255 characters 414 uri_too_long, a string holding U+0000 ' +
        '400 invalid_request naming the field. Amounts are positive safe integers unless stated. A replayed key answers as the first time ' +
        'with replayed: true (in the error object too) and the header Idempotent-Replayed: true; keys are scoped to their account (the same ' +
        'key sent for another account is another request). Answers carry Cache-Control: no-store ' +
        'and X-Content-Type-Options: nosniff. Rate limits answer 429 rate_limited {retry_after_seconds} with Retry-After.',
    },
    components: {
      securitySchemes: {
        appKey: { type: 'http', scheme: 'bearer', description: 'TALLY_API_KEY (the admin key also works)' },
        adminKey: { type: 'http', scheme: 'bearer', description: 'TALLY_ADMIN_KEY' },
        viewerKey: { type: 'http', scheme: 'bearer', description: 'TALLY_VIEWER_KEY: every GET of the app and admin calls and /metrics, nothing that writes (403)' },
      },
    },
    paths,
  };
}

/** Which keys open a call: the viewer key opens reads only. */
function securityOf(route: RouteDefinition): Record<string, string[]>[] {
  const keys = route.access === 'admin' ? ['adminKey'] : ['appKey', 'adminKey'];
  if (route.method === 'GET') keys.push('viewerKey');
  return keys.map((key) => ({ [key]: [] }));
}

/**
 * The answers every call may give besides its own: refusals of the key (checked before the
 * body is read), of the body (size, media type), and 503 while the database is away.
 */
function documentedResponses(route: RouteDefinition): Record<number, string> {
  const common: Record<number, string> = {};
  if (route.access !== 'none') {
    common[401] = 'unauthorized: missing or wrong bearer key';
    common[403] = route.method === 'GET' ? 'forbidden: this call needs the admin key' : 'forbidden: the viewer key is read-only, or this call needs the admin key';
    common[429] = 'rate_limited {retry_after_seconds}: too many wrong keys from this address; retry after Retry-After seconds';
  }
  if (route.body !== undefined) {
    common[413] = `payload_too_large: the body is over ${bodyLimitFor(route)} bytes`;
    common[415] = 'unsupported_media_type: the body is not application/json';
  }
  const responses = { ...common, ...route.responses };
  if (route.database === false) return responses;
  const unavailable = 'database_unavailable: the database cannot be reached; retry after Retry-After seconds';
  const own = route.responses[503];
  return { ...responses, 503: own === undefined ? unavailable : `${own}; or ${unavailable}` };
}
