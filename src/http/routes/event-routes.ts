import { z } from 'zod';
import type { Database } from '../../db/database.js';
import { accountNotFound } from '../../errors.js';
import { createEndpoint, deleteEndpoint, enableEndpoint, getEndpoint, listEndpoints } from '../../events/endpoints.js';
import type { DestinationPolicy } from '../../events/destinations.js';
import { eventTypes, eventsPageSizeMax, readEvents } from '../../events/event-log.js';
import { accountIdSchema } from '../../ledger/commands.js';
import type { Caller } from '../auth.js';
import { eventSchema, webhookEndpointSchema } from '../entities.js';
import { answer, refusals } from '../responses.js';
import { accountIdParam, defineRoute, type RouteDefinition } from '../route.js';
import { maskEndpointUrl } from '../viewer-masks.js';

/** The event feed, the low-balance threshold, and the admin calls for the app's webhook endpoints. */
const lowBalanceThresholdSchema = z.object({ account_id: z.string(), low_balance_threshold: z.int().positive().nullable() });
const accountId = accountIdParam;
const endpointNotFound = refusals('endpoint_not_found');

/** An endpoint as the caller reads it: the viewer key never reads the path or query of its URL. */
const forCaller = (caller: Caller, endpoint: Record<string, unknown>): Record<string, unknown> =>
  caller === 'viewer' && typeof endpoint.url === 'string' ? { ...endpoint, url: maskEndpointUrl(endpoint.url) } : endpoint;

export function eventRoutes(db: Database, destinations: DestinationPolicy): RouteDefinition[] {
  return [
    defineRoute({
      method: 'GET',
      url: '/v1/events',
      access: 'app',
      tag: 'events',
      summary:
        'Events in sequence order, after the sequence given (replayable: the same `after` answers the same events); pass `next_after` to read on. An event appears once every transaction older than it has finished, so no later page ever holds a smaller sequence',
      query: z.strictObject({
        after: z.coerce.number().int().min(0).max(Number.MAX_SAFE_INTEGER).default(0),
        limit: z.coerce.number().int().min(1).max(eventsPageSizeMax).default(100),
        account_id: accountIdSchema.optional(),
      }),
      responses: {
        200: answer(
          'the events after `after`, in sequence order; next_after is where the next page starts (the same `after` when none is newer)',
          z.object({ events: z.array(eventSchema), next_after: z.int().min(0) }),
        ),
      },
      handler: async ({ query }) => ({
        status: 200,
        body: await readEvents(db, { after: query.after, limit: query.limit, accountId: query.account_id }),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/low-balance-threshold',
      access: 'app',
      tag: 'events',
      summary: 'The low-balance threshold as the PUT answers it (null: off)',
      responses: {
        200: answer('the threshold now', lowBalanceThresholdSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params }) => {
        const id = accountId(params);
        const { rows } = await db.query<{ low_balance_threshold: number | null }>(
          'select low_balance_threshold from accounts where id = $1',
          [id],
        );
        if (rows[0] === undefined) throw accountNotFound(id);
        return { status: 200, body: { account_id: id, low_balance_threshold: rows[0].low_balance_threshold } };
      },
    }),
    defineRoute({
      method: 'PUT',
      url: '/v1/accounts/:id/low-balance-threshold',
      access: 'app',
      tag: 'events',
      summary:
        '`balance.low` fires when a change takes `available` from at least this many credits to fewer (once per crossing); null turns it off',
      body: z.strictObject({ threshold: z.int().positive().max(Number.MAX_SAFE_INTEGER).nullable() }),
      responses: {
        200: answer('the threshold now', lowBalanceThresholdSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, body }) => {
        const id = accountId(params);
        const { rows } = await db.query<{ low_balance_threshold: number | null }>(
          'update accounts set low_balance_threshold = $2 where id = $1 returning low_balance_threshold',
          [id, body.threshold],
        );
        if (rows[0] === undefined) throw accountNotFound(id);
        return { status: 200, body: { account_id: id, low_balance_threshold: rows[0].low_balance_threshold } };
      },
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/admin/webhook-endpoints',
      access: 'admin',
      tag: 'events',
      summary: 'Register an endpoint that receives events as signed POSTs (Standard Webhooks); the secret is shown only in this answer',
      body: z.strictObject({
        url: z.string().min(1).max(2048),
        event_types: z.array(z.enum(eventTypes)).min(1).max(eventTypes.length).optional(),
      }),
      responses: {
        201: answer(
          'the endpoint with its signing secret (shown only here)',
          z.object({
            id: z.string(),
            url: z.string(),
            event_types: webhookEndpointSchema.shape.event_types,
            secret: z.string().regex(/^whsec_/),
          }),
        ),
        ...refusals([
          'invalid_request',
          'a URL that is not https, or whose host is or resolves to a loopback, private, link-local or unique-local address (unless TALLY_EVENTS_ALLOW_PRIVATE=1), or an unknown event type',
        ]),
      },
      handler: async ({ body }) => ({ status: 201, body: await createEndpoint(db, body, destinations) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/webhook-endpoints',
      access: 'admin',
      tag: 'events',
      summary:
        'Every endpoint with its delivery state: status, undelivered count, the oldest failing delivery, the last sequence delivered (the viewer key reads each URL as its scheme and host only: paths often carry a token)',
      responses: { 200: answer('every endpoint', z.object({ endpoints: z.array(webhookEndpointSchema) })) },
      handler: async ({ caller }) => ({
        status: 200,
        body: { endpoints: (await listEndpoints(db)).map((endpoint) => forCaller(caller, endpoint)) },
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/webhook-endpoints/:id',
      access: 'admin',
      tag: 'events',
      summary: 'One endpoint with its delivery state (its URL as scheme and host only for the viewer key)',
      responses: { 200: answer('the endpoint', webhookEndpointSchema), ...endpointNotFound },
      handler: async ({ params, caller }) => ({ status: 200, body: forCaller(caller, await getEndpoint(db, params.id ?? '')) }),
    }),
    defineRoute({
      method: 'DELETE',
      url: '/v1/admin/webhook-endpoints/:id',
      access: 'admin',
      tag: 'events',
      summary: 'Remove an endpoint and its undelivered events (the event log keeps them)',
      responses: { 200: answer('removed', z.object({ id: z.string(), deleted: z.literal(true) })), ...endpointNotFound },
      handler: async ({ params }) => ({ status: 200, body: await deleteEndpoint(db, params.id ?? '') }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/admin/webhook-endpoints/:id/enable',
      access: 'admin',
      tag: 'events',
      summary: 'Enable a disabled endpoint: it resumes from its oldest undelivered event, in order per account, with a fresh retry window',
      responses: { 200: answer('the endpoint, enabled', webhookEndpointSchema), ...endpointNotFound },
      handler: async ({ params }) => ({ status: 200, body: await enableEndpoint(db, params.id ?? '') }),
    }),
  ];
}
