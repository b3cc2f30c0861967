import {
  accountIdSchema,
  accountInputSchema,
  adjustmentInputSchema,
  captureInputSchema,
  grantInputSchema,
  holdInputSchema,
  ledgerQuerySchema,
  spendLimitsInputSchema,
  usageBatchInputSchema,
  usageInputSchema,
} from '../../ledger/commands.js';
import type { Actor, Ledger, Outcome } from '../../ledger/ledger.js';
import type { UsageBatcher } from '../../ledger/usage-batcher.js';
import type { Metrics } from '../../ops/metrics.js';
import { bodyLimitLargeBytes, defineRoute, parseInput, type Answer, type RouteDefinition } from '../route.js';

/** The ledger's HTTP calls: accounts, balance, usage, holds, spend limits, ledger, admin grants and adjustments. */
const accountId = (params: Record<string, string>): string => parseInput(accountIdSchema, params.id, 'id');
// An entry's actor names the API it came through. The app's calls (usage, holds, batches) are
// the app's whichever key made them: actor `admin` is kept for an operator's grants and
// adjustments, which must carry a reason (the admin_has_reason check), and an app call has none.
const appActor: Actor = 'app';
const answer = (outcome: Outcome): Answer => ({ status: outcome.status, body: outcome.body });

const errorResponses = { 400: 'invalid_request naming the field', 404: 'account_not_found' };
const spendRefusals = 'insufficient_credits {available}, or spend_limit_exceeded {window: "day" | "month", limit, spent, resets_at} when the spend would pass a limit (nothing is written; the key keeps this answer)';
const spendLimitsAnswer = '{account_id, per_day, per_month, spent: {day, month}, resets_at: {day, month}}';

export function ledgerRoutes(ledger: Ledger, usageBatcher: UsageBatcher, hashDevice: (fingerprint: string) => string, metrics: Metrics): RouteDefinition[] {
  const counted = (operation: string, credits: number, outcome: Outcome): Answer => {
    metrics.countOperation(operation, outcome.status, credits);
    return answer(outcome);
  };
  return [
    defineRoute({
      method: 'PUT',
      url: '/v1/accounts/:id',
      access: 'app',
      tag: 'accounts',
      summary: 'Create or update an account (fields left out keep their value)',
      body: accountInputSchema,
      responses: { 200: 'the account', ...errorResponses },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await ledger.upsertAccount(accountId(params), body, body.device_fingerprint === undefined ? undefined : hashDevice(body.device_fingerprint)),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id',
      access: 'app',
      tag: 'accounts',
      summary: 'An account with its balance and live grants',
      responses: { 200: 'the account', ...errorResponses },
      handler: async ({ params }) => ({ status: 200, body: await ledger.getAccount(accountId(params)) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/balance',
      access: 'app',
      tag: 'accounts',
      summary: 'Available, held and debt credits',
      responses: { 200: '{account_id, available, held, debt}', ...errorResponses },
      handler: async ({ params }) => ({ status: 200, body: await ledger.balance(accountId(params)) }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/usage',
      access: 'app',
      tag: 'usage',
      summary: 'Spend credits (idempotent by key)',
      body: usageInputSchema,
      responses: { 200: '{entry_id, amount, available, replayed}', 402: spendRefusals, 409: 'idempotency_conflict', ...errorResponses },
      handler: async ({ params, body }) => counted('usage', body.amount, await usageBatcher.spend(accountId(params), body, appActor)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/usage/batch',
      access: 'app',
      tag: 'usage',
      summary: 'Up to 1000 usage events in one transaction; one result per event, in order (a 402 result may be insufficient_credits or spend_limit_exceeded)',
      body: usageBatchInputSchema,
      bodyLimitBytes: bodyLimitLargeBytes,
      responses: { 200: '{results: [{status, ...answer of the single call}]}', 400: 'malformed batch', 401: 'unauthorized' },
      handler: async ({ body }) => {
        const outcomes = await ledger.usageBatch(body.events, appActor);
        outcomes.forEach((outcome, index) => metrics.countOperation('usage', outcome.status, body.events[index]?.amount ?? 0));
        return { status: 200, body: { results: outcomes.map((outcome) => ({ status: outcome.status, ...outcome.body })) } };
      },
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/holds',
      access: 'app',
      tag: 'holds',
      summary: 'Reserve credits for a bounded time (idempotent by key)',
      body: holdInputSchema,
      responses: { 201: '{hold_id, amount, expires_at, available, replayed}', 402: spendRefusals, 409: 'idempotency_conflict', ...errorResponses },
      handler: async ({ params, body }) => counted('hold', body.amount, await ledger.hold(accountId(params), body, appActor)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/holds/:hold_id/capture',
      access: 'app',
      tag: 'holds',
      summary: 'Capture up to the held amount; the rest is released. Without a body (or without amount), the whole hold is captured; amount 0 captures nothing and releases it all',
      body: captureInputSchema,
      responses: { 200: '{captured, released, available}', 400: 'capture_exceeds_hold or invalid_request', 404: 'hold_not_found', 409: 'hold_not_pending {status}' },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await ledger.capture(params.hold_id ?? '', body.amount, appActor),
      }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/holds/:hold_id/void',
      access: 'app',
      tag: 'holds',
      summary: 'Release a hold entirely',
      responses: { 200: '{released, available}', 404: 'hold_not_found', 409: 'hold_not_pending {status}' },
      handler: async ({ params }) => ({ status: 200, body: await ledger.void(params.hold_id ?? '', appActor) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/limits',
      access: 'app',
      tag: 'accounts',
      summary: 'Spend limits per UTC day and per UTC month (null: none) and the credits spent in the current windows (usage and holds; a resolved hold counts what it captured)',
      responses: { 200: spendLimitsAnswer, ...errorResponses },
      handler: async ({ params }) => ({ status: 200, body: await ledger.spendLimits(accountId(params)) }),
    }),
    defineRoute({
      method: 'PUT',
      url: '/v1/accounts/:id/limits',
      access: 'app',
      tag: 'accounts',
      summary:
        'Set spend limits in credits per UTC day and per UTC month: a field left out keeps its limit, null removes it, 0 stops spending in that window. A usage or hold that would pass a limit is 402 spend_limit_exceeded',
      body: spendLimitsInputSchema,
      responses: { 200: spendLimitsAnswer, ...errorResponses },
      handler: async ({ params, body, caller }) => ({
        status: 200,
        body: await ledger.setSpendLimits(accountId(params), body, caller === 'admin' ? 'admin' : appActor),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/ledger',
      access: 'app',
      tag: 'accounts',
      summary: 'Ledger entries, newest first, paged by cursor',
      query: ledgerQuerySchema,
      responses: { 200: '{entries, next_cursor}', ...errorResponses },
      handler: async ({ params, query }) => ({ status: 200, body: await ledger.entries(accountId(params), query.limit, query.cursor) }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/grants',
      access: 'admin',
      tag: 'admin',
      summary: 'Grant promo or admin credits (idempotent by key)',
      body: grantInputSchema,
      responses: {
        201: 'the grant',
        ...errorResponses,
        400: 'grant_exceeds_limit {limit} (the catalog\'s limits.admin_grant_credits_max), balance_limit_exceeded (the balance would pass the safe integer range) or invalid_request',
        409: 'idempotency_conflict',
      },
      handler: async ({ params, body }) => counted('grant', body.amount, await ledger.grant(accountId(params), body)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/adjustments',
      access: 'admin',
      tag: 'admin',
      summary: 'A signed correction by an operator, with a reason',
      body: adjustmentInputSchema,
      responses: {
        201: 'the entry',
        400: 'adjustment_exceeds_limit, balance_limit_exceeded or invalid_request',
        402: 'insufficient_credits',
        409: 'idempotency_conflict',
        404: 'account_not_found',
      },
      handler: async ({ params, body }) => counted('adjustment', Math.abs(body.amount), await ledger.adjust(accountId(params), body)),
    }),
  ];
}
