import {
  accountInputSchema,
  adjustmentInputSchema,
  captureInputSchema,
  grantInputSchema,
  holdInputSchema,
  ledgerQuerySchema,
  quoteInputSchema,
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
  costSchema,
  creditsSchema,
  entitlementsSchema,
  entrySchema,
  grantSchema,
  rateCardReferenceSchema,
  spendLimitsSchema,
  timestampSchema,
} from '../entities.js';
import { answer as answerOf, errorCatalog, errorObjectSchema, refusals, type ErrorCode } from '../responses.js';
import { accountIdParam, bodyLimitLargeBytes, defineRoute, type Answer, type RouteDefinition } from '../route.js';
import { maskPerson } from '../viewer-masks.js';

/** The ledger's HTTP calls: accounts, balance, usage, holds, spend limits, ledger, admin grants and adjustments. */
const accountId = accountIdParam;
// An entry's actor names the API it came through. The app's calls (usage, holds, batches) are
// the app's whichever key made them: actor `admin` is kept for an operator's grants and
// adjustments, which must carry a reason (the admin_has_reason check), and an app call has none.
const appActor: Actor = 'app';
const answer = (outcome: Outcome): Answer => ({ status: outcome.status, body: outcome.body });

// A replay answers exactly as the first time, marked `replayed: true`.
const replayed = z.boolean();
// A priced spend's answer adds its exact cost and the rate card version that priced it.
const priced = { cost: costSchema.optional(), rate_card: rateCardReferenceSchema.optional() };
export const usageAnswerSchema = z.object({ entry_id: z.string(), amount: creditsSchema, available: creditsSchema, ...priced, replayed });
export const holdAnswerSchema = z.object({
  hold_id: z.string(),
  amount: creditsSchema,
  expires_at: timestampSchema,
  available: creditsSchema,
  ...priced,
  replayed,
});
export const captureAnswerSchema = z.object({ captured: creditsSchema, released: creditsSchema, available: creditsSchema, ...priced });
export const quoteAnswerSchema = z.object({
  amount: creditsSchema,
  cost: costSchema,
  rate_card: rateCardReferenceSchema.nullable(),
  available: creditsSchema,
  allowed: z.boolean(),
  reason: z.enum(['meter_not_entitled', 'insufficient_credits', 'spend_limit_exceeded']).optional(),
});
export const voidAnswerSchema = z.object({ released: creditsSchema, available: creditsSchema });
export const ledgerPageSchema = z.object({ entries: z.array(entrySchema), next_cursor: z.string().nullable() });
// A replayed grant or adjustment is the first answer with `replayed: true` added.
const replayMark = { replayed: z.literal(true).optional() };

/** The refusals a spend (single or in a batch) may give, each kept as its key's first answer. */
const spendRefusals: ErrorCode[] = [
  'insufficient_credits',
  'spend_limit_exceeded',
  'meter_not_entitled',
  'idempotency_conflict',
  'account_not_found',
];
/** What a spend's input may be refused for before anything is written. */
const spendInputRefusals: (ErrorCode | [ErrorCode, string])[] = [
  [
    'invalid_request',
    'a field is wrong: both or neither of amount and meter, a dimension the meter lacks, a negative or fractional quantity, or a cost beyond 2^53 - 1 credits',
  ],
  'unknown_meter',
];
// One result of a batch: `status` beside the body the single call would answer.
const batchResultSchema = z.union([
  usageAnswerSchema.extend({ status: z.literal(200) }),
  ...spendRefusals.map((code) => z.object({ status: z.literal(errorCatalog[code].status), error: errorObjectSchema(code) })),
]);

export function ledgerRoutes(
  ledger: Ledger,
  usageBatcher: UsageBatcher,
  hashDevice: (fingerprint: string) => string,
  metrics: Metrics,
): RouteDefinition[] {
  const counted = (operation: string, credits: number | undefined, outcome: Outcome): Answer => {
    metrics.countOperation(operation, outcome.status, chargedCredits(credits, outcome));
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
      handler: async ({ params, caller }) => ({ status: 200, body: maskPerson(caller, await ledger.getAccount(accountId(params))) }),
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
      method: 'GET',
      url: '/v1/accounts/:id/entitlements',
      access: 'app',
      tag: 'accounts',
      summary:
        "What the account may use: its plan (its subscription's while active, trialing or past due; several plan items: the union, the one with the most credits per month naming plan_id and the rate card; else the free plan; else none, with every meter), the meters a priced spend may name, the app's features, the rate card and the plans' recurring grants",
      responses: { 200: answerOf('the entitlements', entitlementsSchema), ...refusals('account_not_found') },
      handler: async ({ params }) => ({ status: 200, body: await ledger.entitlements(accountId(params)) }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/usage',
      access: 'app',
      tag: 'usage',
      summary:
        "Spend credits (idempotent by key): `amount` credits, or `meter` with `quantities` priced by the account's rate card (the answer adds `cost` and `rate_card`)",
      body: usageInputSchema,
      responses: {
        200: answerOf('spent (or the first answer of this key, replayed)', usageAnswerSchema),
        ...refusals(...spendRefusals, ...spendInputRefusals),
      },
      handler: async ({ params, body }) => {
        ledger.checkSpend(body);
        return counted('usage', body.amount, await usageBatcher.spend(accountId(params), body, appActor));
      },
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
        ...refusals(
          ['invalid_request', 'a malformed batch (nothing is spent), an event naming a dimension its meter lacks among them'],
          ['unknown_meter', 'an event names a meter the catalog does not have (nothing is spent)'],
        ),
      },
      handler: async ({ body }) => {
        const outcomes = await ledger.usageBatch(body.events, appActor);
        outcomes.forEach((outcome, index) =>
          metrics.countOperation('usage', outcome.status, chargedCredits(body.events[index]?.amount, outcome)),
        );
        return { status: 200, body: { results: outcomes.map((outcome) => ({ status: outcome.status, ...outcome.body })) } };
      },
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/holds',
      access: 'app',
      tag: 'holds',
      summary:
        'Reserve credits for a bounded time (idempotent by key): `amount`, or `meter` with the most `quantities` the call may use, which reserves ceil(cost) at the version in effect',
      body: holdInputSchema,
      responses: {
        201: answerOf('held (or the first answer of this key, replayed)', holdAnswerSchema),
        ...refusals(...spendRefusals, ...spendInputRefusals),
      },
      handler: async ({ params, body }) => counted('hold', body.amount, await ledger.hold(accountId(params), body, appActor)),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/holds/:hold_id/capture',
      access: 'app',
      tag: 'holds',
      summary:
        "Capture up to the held amount; the rest is released. Without a body (or without amount), the whole hold is captured; amount 0 captures nothing and releases it all. A priced hold is captured by `quantities` (what was used), priced by the hold's rate card version with the account's carry",
      body: captureInputSchema,
      responses: {
        200: answerOf('captured; the rest of the hold released', captureAnswerSchema),
        ...refusals(
          'capture_exceeds_hold',
          ['invalid_request', 'quantities for a hold of credits, an amount for a priced hold, or a dimension its meter lacks'],
          'hold_not_found',
          'hold_not_pending',
        ),
      },
      handler: async ({ params, body }) => ({
        status: 200,
        body:
          body.quantities === undefined
            ? await ledger.capture(params.hold_id ?? '', body.amount, appActor)
            : await ledger.capturePriced(params.hold_id ?? '', body.quantities, appActor),
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
      method: 'POST',
      url: '/v1/accounts/:id/quote',
      access: 'app',
      tag: 'usage',
      summary:
        "Price a spend without writing anything: the credits it would charge now (with the account's carry), its exact cost, the rate card version, and whether it would pass (`reason`: the refusal it would get)",
      body: quoteInputSchema,
      responses: {
        200: answerOf('the quote', quoteAnswerSchema),
        ...refusals(...spendInputRefusals, 'account_not_found'),
      },
      handler: async ({ params, body }) => ({ status: 200, body: await ledger.quote(accountId(params), body) }),
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

/** The credits a call asked for; for a priced spend, what it charged (known once it passed). */
function chargedCredits(asked: number | undefined, outcome: Outcome): number {
  if (asked !== undefined) return asked;
  const charged = outcome.body.amount;
  return outcome.status < 300 && typeof charged === 'number' ? charged : 0;
}
