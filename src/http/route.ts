import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { invalidRequest } from '../errors.js';
import type { AccessLevel, Caller, KeyChecker } from './auth.js';

/**
 * A route is declared once, with its access level and zod schemas; from the declaration come
 * the Fastify route, the strict validation (nothing runs on a bad request) and the OpenAPI
 * description. Handlers stay thin: validated input in, an answer out.
 */
export interface Answer {
  status: number;
  body: unknown;
  contentType?: string;
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
  summary: string;
  tag: string;
  body?: z.ZodType<Body>;
  query?: z.ZodType<Query>;
  /** Status codes and what they mean, for the OpenAPI description. */
  responses: Record<number, string>;
  /** Hidden from the OpenAPI description (the description itself, the docs page). */
  hidden?: boolean;
  /** False for the few calls that never touch the database (so they never answer database_unavailable). */
  database?: false;
  handler(input: RouteInput<Body, Query>): Promise<Answer>;
}

// Erases the generic parameters so routes of different shapes share one list.
export const defineRoute = <Body, Query>(definition: RouteDefinition<Body, Query>): RouteDefinition =>
  definition as unknown as RouteDefinition;

export function parseInput<T>(schema: z.ZodType<T>, value: unknown, prefix: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  if (issue === undefined) throw invalidRequest(prefix, 'invalid');
  const path = issue.path.map(String);
  if (issue.code === 'unrecognized_keys') {
    path.push(issue.keys[0] ?? '?');
    throw invalidRequest([prefix, ...path].filter((part) => part !== '').join('.'), 'unknown field');
  }
  const field = [prefix, ...path].filter((part) => part !== '').join('.');
  const missing = issue.code === 'invalid_type' && issue.message.includes('received undefined');
  throw invalidRequest(field === '' ? 'body' : field, missing ? 'required' : issue.message);
}

export function registerRoutes(app: FastifyInstance, routes: RouteDefinition[], keys: KeyChecker): void {
  for (const route of routes) {
    app.route({
      method: route.method,
      url: route.url,
      handler: async (request, reply) => {
        const caller = keys.authorize(route.access, request.headers.authorization);
        const body = route.body === undefined ? undefined : parseInput(route.body, request.body ?? {}, '');
        const query = route.query === undefined ? undefined : parseInput(route.query, request.query ?? {}, '');
        const answer = await route.handler({
          params: request.params as Record<string, string>,
          body,
          query,
          caller,
          request,
          reply,
        });
        if (answer.contentType !== undefined) reply.type(answer.contentType);
        return reply.code(answer.status).send(answer.body);
      },
    });
  }
}
