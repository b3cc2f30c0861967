import { z } from 'zod';
import type { RouteDefinition } from './route.js';

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
    if (route.access !== 'none') operation.security = [{ [route.access === 'admin' ? 'adminKey' : 'appKey']: [] }];
    if (route.body !== undefined) {
      operation.requestBody = {
        required: true,
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
        'Credits ledger and Stripe billing engine. Errors are {"error": {"code", "message", ...details}}. Amounts are positive safe integers unless stated.',
    },
    components: {
      securitySchemes: {
        appKey: { type: 'http', scheme: 'bearer', description: 'TALLY_API_KEY (the admin key also works)' },
        adminKey: { type: 'http', scheme: 'bearer', description: 'TALLY_ADMIN_KEY' },
      },
    },
    paths,
  };
}

/** Every call that reads or writes the database may answer 503 while it is away. */
function documentedResponses(route: RouteDefinition): Record<number, string> {
  if (route.database === false) return route.responses;
  const unavailable = 'database_unavailable: the database cannot be reached; retry after Retry-After seconds';
  const own = route.responses[503];
  return { ...route.responses, 503: own === undefined ? unavailable : `${own}; or ${unavailable}` };
}
