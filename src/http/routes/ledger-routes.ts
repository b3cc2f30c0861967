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
import { z } from 'zod';
import type { Actor, Ledger, Outcome } from '../../ledger/ledger.js';
import type { UsageBatcher } from '../../ledger/usage-batcher.js';
import type { Metrics } from '../../ops/metrics.js';
import {
  accountDetailSchema,
  accountSchema,
  balanceSchema,
  creditsSchema,
  entrySchema,
  grantSchema,
  timestampSchema,
} from '../entities.js';
import { answer as answerOf, errorCatalog, errorObjectSchema, refusals, type ErrorCode } from '../responses.js';
import { bodyLimitLargeBytes, defineRoute, parseInput, type Answer, type RouteDefinition } from '../route.js';

/** The ledger's HTTP calls: accounts, balance, usage, holds, spend limits, ledger, admin grants and adjustments. */
const accountId = (params: Record<string, string>): string => parseInput(accountIdSchema, params.id, 'id');
// An entry's actor names the API it came through. The app's calls (usage, holds, batches) are
// the app's whichever key made them: actor `admin` is kept for an operator's grants and
// adjustments, which must carry a reason (the admin_has_reason check), and an app call has none.
const appActor: Actor = 'app';
const answer = (outcome: Outcome): Answer => ({ status: outcome.status, body: outcome.body });

// A replay answers exactly as the first time, marked `replayed: true`.
const replayed = z.boolean();
export const usageAnswerSchema = z.object({ entry_id: z.string(), amount: creditsSchema, available: creditsSchema, replayed });
export const holdAnswerSchema = z.object({
  hold_id: z.string(),
  amount: creditsSchema,
  expires_at: timestampSchema,
  available: creditsSchema,
  replayed,
});
export const captureAnswerSchema = z.object({ captured: creditsSchema, released: creditsSchema, available: creditsSchema });
export const voidAnswerSchema = z.object({ released: creditsSchema, available: creditsSchema });
export const ledgerPageSchema = z.object({ entries: z.array(entrySchema), next_cursor: z.string().nullable() });
// A replayed grant or adjustment is the first answer with `replayed: true` added.
const replayMark = { replayed: z.literal(true).optional() };

/** The refusals a spend (single or in a batch) may give, each kept as its key's first answer. */
const spendRefusals: ErrorCode[] = ['insufficient_credits', 'spend_limit_exceeded', 'idempotency_conflict', 'account_not_found'];
// One result of a batch: `status` beside the body the single call would answer.
const batchResultSchema = z.union([
  usageAnswerSchema.extend({ status: z.literal(200) }),
  ...spendRefusals.map((code) => z.object({ status: z.literal(errorCatalog[code].status), error: errorObjectSchema(code) })),
]);
export const spendLimitsSchema = z.object({
  account_id: z.string(),
  per_day: creditsSchema.nullable(),
  per_month: creditsSchema.nullable(),
  spent: z.object({ day: creditsSchema, month: creditsSchema }),
  resets_at: z.object({ day: timestampSchema, month: timestampSchema }),
});

export function ledgerRoutes(
  ledger: Ledger,
  usageBatcher: UsageBatcher,
  hashDevice: (fingerprint: string) => string,
  metrics: Metrics,
): RouteDefinition[] {
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
      responses: { 200: answerOf('the account, created or updated', accountSchema) },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await ledger.upsertAccount(
          accountId(params),
          body,
          body.device_fingerprint === undefined ? undefined : hashDevice(body.device_fingerprint),
        ),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id',
      access: 'app',
      tag: 'accounts',
      summary: 'An account with its balance and live grants',
      responses: {
        200: answerOf('the account with its subscription, trial, live grants and balance', accountDetailSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params }) => ({ status: 200, body: await ledger.getAccount(accountId(params)) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/balance',
      access: 'app',
      tag: 'accounts',
      summary: 'Available, held and debt credits',
      responses: { 200: answerOf('the balance', balanceSchema), ...refusals('account_not_found') },
      handler: async ({ params }) => ({ status: 200, body: await ledger.balance(accountId(params)) }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/usage',
      access: 'app',
      tag: 'usage',
      summary: 'Spend credits (idempotent by key)',
      body: usageInputSchema,
      responses: { 200: answerOf('spent (or the first answer of this key, replayed)', usageAnswerSchema), ...refusals(...spendRefusals) },
      handler: async ({ params, body }) => counted('usage', body.amount, await usageBatcher.spend(accountId(params), body, appActor)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/usage/batch',
      access: 'app',
      tag: 'usage',
      summary:
        'Up to 1000 usage events in one transaction; one result per event, in order (a 402 result may be insufficient_credits or spend_limit_exceeded)',
      body: usageBatchInputSchema,
      bodyLimitBytes: bodyLimitLargeBytes,
      responses: {
        200: answerOf(
          'one result per event, in order, each as the single call would answer with its status beside it',
          z.object({ results: z.array(batchResultSchema) }),
        ),
        ...refusals(['invalid_request', 'a malformed batch (nothing is spent)']),
      },
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
      responses: { 201: answerOf('held (or the first answer of this key, replayed)', holdAnswerSchema), ...refusals(...spendRefusals) },
      handler: async ({ params, body }) => counted('hold', body.amount, await ledger.hold(accountId(params), body, appActor)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/holds/:hold_id/capture',
      access: 'app',
      tag: 'holds',
      summary:
        'Capture up to the held amount; the rest is released. Without a body (or without amount), the whole hold is captured; amount 0 captures nothing and releases it all',
      body: captureInputSchema,
      responses: {
        200: answerOf('captured; the rest of the hold released', captureAnswerSchema),
        ...refusals('capture_exceeds_hold', 'hold_not_found', 'hold_not_pending'),
      },
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
      responses: { 200: answerOf('released', voidAnswerSchema), ...refusals('hold_not_found', 'hold_not_pending') },
      handler: async ({ params }) => ({ status: 200, body: await ledger.void(params.hold_id ?? '', appActor) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/limits',
      access: 'app',
      tag: 'accounts',
      summary:
        'Spend limits per UTC day and per UTC month (null: none) and the credits spent in the current windows (usage and holds; a resolved hold counts what it captured)',
      responses: { 200: answerOf('the limits and what was spent', spendLimitsSchema), ...refusals('account_not_found') },
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
      responses: {
        200: answerOf('the limits as set and what was spent', spendLimitsSchema),
        ...refusals('invalid_request', 'account_not_found'),
      },
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
      responses: {
        200: answerOf('a page of entries; next_cursor is null on the last page', ledgerPageSchema),
        ...refusals('account_not_found'),
      },
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
        201: answerOf('the grant (replayed: true when the key was seen before)', grantSchema.extend(replayMark)),
        ...refusals(
          'grant_exceeds_limit',
          'balance_limit_exceeded',
          ['invalid_request', 'a field is wrong, or expires_at is not in the future'],
          'account_not_found',
          'idempotency_conflict',
        ),
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
        201: answerOf('the entry (replayed: true when the key was seen before)', entrySchema.extend(replayMark)),
        ...refusals(
          'adjustment_exceeds_limit',
          'balance_limit_exceeded',
          'insufficient_credits',
          'idempotency_conflict',
          'account_not_found',
        ),
      },
      handler: async ({ params, body }) => counted('adjustment', Math.abs(body.amount), await ledger.adjust(accountId(params), body)),
    }),
  ];
}
