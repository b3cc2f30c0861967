import { z } from 'zod';
import type { Database } from '../../db/database.js';
import { dashboardAssets, dashboardHtml, dashboardSecurityPolicy } from '../../dashboard/assets.js';
import {
  accountGrants,
  accountHolds,
  accountPlan,
  accountsPerPlan,
  accountSortColumns,
  balanceHistory,
  creditTotals,
  ledgerEntry,
  meterSpend,
  overview,
  rateCards,
  searchAccounts,
  webhookEvent,
  type AccountSort,
  type CatalogPlanName,
} from '../../dashboard/reads.js';
import {
  accountGrantsSchema,
  accountHoldsSchema,
  accountPlanSchema,
  accountSearchSchema,
  accountsPerPlanSchema,
  balanceHistorySchema,
  callerSchema,
  creditTotalsSchema,
  entryWithAccountSchema,
  inboxEventDetailSchema,
  meterSpendSchema,
  overviewSchema,
  rateCardsOverviewSchema,
} from '../dashboard-answers.js';
import { TallyError } from '../../errors.js';
import { accountIdSchema } from '../../ledger/commands.js';
import type { StripeGateway } from '../../stripe/gateway.js';
import { answer, refusals } from '../responses.js';
import { accountIdParam, defineRoute, type RouteDefinition } from '../route.js';
import { maskPerson } from '../viewer-masks.js';

/**
 * The operators' dashboard: its page and browser files (no data, no key needed), and the
 * read-only admin calls it needs beyond the app's API. Reads are `admin` routes, so the viewer
 * key opens them (every GET) and the app key is refused (403), as for every admin call. The
 * refusals every admin read shares (401, 403, 429 for wrong keys, 400 for a bad query or path,
 * 503 without the database) are added to the description by openapi.ts (commonResponses); each
 * route declares its answer's schema (http/dashboard-answers.ts) and the refusals of its own.
 */
export interface DashboardRouteDependencies {
  db: Database;
  gateway: StripeGateway | undefined;
  /** The catalog's plans, for their names and its order. */
  plans: readonly CatalogPlanName[];
  /** The ledger's clock (tests move it); undefined means the database's. */
  clock?: (() => Date) | undefined;
}

export const dashboardChartDaysMax = 366;
export const dashboardPageSizeMax = 200;
export const dashboardOffsetMax = 10_000;
export const webhookWindowHoursMax = 24 * 30;
export const rateCardVersionsListedMax = 200;

const accountId = accountIdParam;
const pageQuery = {
  limit: z.coerce.number().int().min(1).max(dashboardPageSizeMax).default(50),
  offset: z.coerce.number().int().min(0).max(dashboardOffsetMax).default(0),
};
const daysQuery = {
  days: z.coerce.number().int().min(1).max(dashboardChartDaysMax).default(30),
  until: z.iso.date().optional(),
};

/** `text/javascript; charset=utf-8` → `text/javascript`: the description names media types without their parameters. */
const mediaTypeOf = (contentType: string): string => contentType.split(';')[0]?.trim() ?? contentType;

const pageHeaders = { 'content-security-policy': dashboardSecurityPolicy, 'x-frame-options': 'DENY', 'referrer-policy': 'no-referrer' };

function pageRoutes(): RouteDefinition[] {
  return [
    defineRoute({
      method: 'GET',
      url: '/dashboard',
      database: false,
      access: 'none',
      tag: 'operations',
      summary:
        "The operators' web page; it holds no data and asks for the admin key (or the viewer key, which reads and cannot act), then reads the admin API with it",
      responses: { 200: { description: 'the page (HTML); it loads its scripts and styles from /dashboard/', contentType: 'text/html' } },
      handler: async () => ({ status: 200, body: dashboardHtml, contentType: 'text/html; charset=utf-8', headers: pageHeaders }),
    }),
    ...dashboardAssets().map((asset) =>
      defineRoute({
        method: 'GET',
        url: asset.url,
        database: false,
        access: 'none',
        tag: 'operations',
        hidden: true,
        summary: "The dashboard's scripts, styles and libraries (no data)",
        responses: { 200: { description: 'the file', contentType: mediaTypeOf(asset.contentType) } },
        handler: async () => ({ status: 200, body: asset.body, contentType: asset.contentType, headers: pageHeaders }),
      }),
    ),
  ];
}

export function dashboardRoutes(dependencies: DashboardRouteDependencies): RouteDefinition[] {
  const { db } = dependencies;
  const now = (): Date | null => dependencies.clock?.() ?? null;
  return [
    ...pageRoutes(),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/caller',
      database: false,
      access: 'admin',
      tag: 'admin',
      summary: 'Who the presented key is (admin, or viewer: reads only) and whether Stripe is configured; the dashboard logs in with it',
      responses: { 200: answer('which key this is (the viewer key cannot act) and whether Stripe is configured', callerSchema) },
      handler: async ({ caller }) => ({
        status: 200,
        body: { role: caller, can_act: caller === 'admin', stripe_configured: dependencies.gateway !== undefined },
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/overview',
      access: 'admin',
      tag: 'admin',
      summary:
        "The dashboard's overview: accounts, credits outstanding (available and held across accounts) and debt, webhook intake, outcomes and lag over the last `hours`, alerts open and resolved, the last reconciliation, and the Stripe breaker (`not_configured` without Stripe)",
      query: z.strictObject({ hours: z.coerce.number().int().min(1).max(webhookWindowHoursMax).default(24) }),
      responses: { 200: answer('the figures; a sum beyond the safe integer range is a decimal string', overviewSchema) },
      handler: async ({ query }) => {
        const figures = await overview(db, { now: now(), webhookWindowHours: query.hours });
        const breaker = dependencies.gateway?.status() ?? { state: 'not_configured', failures: 0, opened_at: null };
        return { status: 200, body: { ...figures, stripe: { configured: dependencies.gateway !== undefined, breaker } } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/credit-totals',
      access: 'admin',
      tag: 'admin',
      summary:
        'Credits granted, spent, expired, clawed back and adjusted down per UTC day, over all accounts or one (`account_id`); the last day is `until` (default today)',
      query: z.strictObject({ ...daysQuery, account_id: accountIdSchema.optional() }),
      responses: {
        200: answer(
          'one row per UTC day, oldest first (an unknown account_id has only zeros); a sum beyond the safe integer range is a decimal string',
          creditTotalsSchema,
        ),
      },
      handler: async ({ query }) => ({
        status: 200,
        body: {
          days: await creditTotals(db, { days: query.days, until: query.until ?? null, now: now(), accountId: query.account_id ?? null }),
        },
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/search',
      access: 'admin',
      tag: 'admin',
      summary:
        'Accounts whose id, email (any case) or Stripe customer id starts with `search`, sorted by `sort` and `order`, paged by `offset`. With the viewer key, emails and names are masked, `search` does not match emails and `sort=email` is refused (403)',
      query: z.strictObject({
        search: z.string().min(1).max(320).optional(),
        sort: z.enum(Object.keys(accountSortColumns) as [AccountSort, ...AccountSort[]]).default('id'),
        order: z.enum(['asc', 'desc']).default('asc'),
        ...pageQuery,
      }),
      responses: { 200: answer('a page of accounts; next_offset is null on the last page', accountSearchSchema) },
      handler: async ({ query, caller }) => {
        // An order of masked emails would still rank the emails themselves.
        if (caller === 'viewer' && query.sort === 'email') throw new TallyError('forbidden', 403, 'the viewer key cannot sort by email');
        const found = await searchAccounts(db, {
          search: query.search ?? null,
          matchEmail: caller !== 'viewer',
          sort: query.sort,
          order: query.order,
          limit: query.limit,
          offset: query.offset,
          now: now(),
        });
        return { status: 200, body: { ...found, accounts: found.accounts.map((account) => maskPerson(caller, account)) } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/:id/grants',
      access: 'admin',
      tag: 'admin',
      summary:
        "An account's grants, newest first: `live` (credits left, not expired), `past` (used up or expired) or `all`; each with its `state`",
      query: z.strictObject({ state: z.enum(['live', 'past', 'all']).default('all'), ...pageQuery }),
      responses: {
        200: answer('a page of grants, newest first; next_offset is null on the last page', accountGrantsSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, query }) => ({ status: 200, body: await accountGrants(db, accountId(params), { ...query, now: now() }) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/:id/holds',
      access: 'admin',
      tag: 'admin',
      summary: "An account's holds, newest first, optionally of one `status`; paged by `cursor`",
      query: z.strictObject({
        status: z.enum(['pending', 'captured', 'voided', 'expired']).optional(),
        limit: pageQuery.limit,
        cursor: z
          .string()
          .regex(/^[0-9]{1,18}$/, 'a cursor from a previous page')
          .optional(),
      }),
      responses: {
        200: answer('a page of holds, newest first; next_cursor is null on the last page', accountHoldsSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, query }) => ({
        status: 200,
        body: await accountHolds(db, accountId(params), {
          status: query.status ?? null,
          limit: query.limit,
          cursor: query.cursor === undefined ? null : Number(query.cursor),
        }),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/:id/balance-history',
      access: 'admin',
      tag: 'admin',
      summary: "An account's balance (available minus debt) at the end of each UTC day; null before its first entry",
      query: z.strictObject(daysQuery),
      responses: { 200: answer('one row per UTC day, oldest first', balanceHistorySchema), ...refusals('account_not_found') },
      handler: async ({ params, query }) => ({
        status: 200,
        body: { days: await balanceHistory(db, accountId(params), { days: query.days, until: query.until ?? null, now: now() }) },
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/:id/meter-spend',
      access: 'admin',
      tag: 'admin',
      summary:
        'What an account spent per meter over UTC days (the last day is `until`, default today): usage and captured holds as the credits they charged and their exact cost (a decimal string); spends of a plain amount under the meter null',
      query: z.strictObject(daysQuery),
      responses: {
        200: answer('the totals per meter, most credits first, and every day of the window, oldest first', meterSpendSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, query }) => ({
        status: 200,
        body: await meterSpend(db, accountId(params), { days: query.days, until: query.until ?? null, now: now() }),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts/:id/plan',
      access: 'admin',
      tag: 'admin',
      summary:
        "An account's plan as GET /v1/accounts/{id}/entitlements answers it, with the catalog's plan names, and each recurring grant's current period (UTC) and the grant of that period if the account's first call of the period gave it; it never gives one",
      responses: {
        200: answer("the account's plan, entitlements and recurring grants with this period's", accountPlanSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params }) => ({
        status: 200,
        body: await accountPlan(db, accountId(params), { now: now(), plans: dependencies.plans }),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/plans',
      access: 'admin',
      tag: 'admin',
      summary:
        'How many accounts are on each plan now (as a spend decides it): every plan of the catalog, its free plan included, then plans that subscriptions name but the catalog no longer has, then no plan',
      responses: { 200: answer('the accounts per plan, in the catalog order, no plan last', accountsPerPlanSchema) },
      handler: async () => ({ status: 200, body: await accountsPerPlan(db, dependencies.plans) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/rate-cards',
      access: 'admin',
      tag: 'admin',
      summary:
        'Every rate card: whether it is the default, the plans that name it, the version in effect and the one scheduled next, and its newest `versions` versions with who published each (catalog or admin) and where each stands',
      query: z.strictObject({ versions: z.coerce.number().int().min(1).max(rateCardVersionsListedMax).default(50) }),
      responses: { 200: answer('every rate card, by id; rates are exact decimal strings', rateCardsOverviewSchema) },
      handler: async ({ query }) => ({ status: 200, body: await rateCards(db, { now: now(), versions: query.versions }) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/webhook-events/:event_id',
      access: 'admin',
      tag: 'admin',
      summary:
        'One stored Stripe event: its payload (null for the viewer key: it carries personal data), status, attempts, last error, next attempt and the account it was applied to',
      responses: { 200: answer('the stored event with its payload', inboxEventDetailSchema), ...refusals('event_not_found') },
      handler: async ({ params, caller }) => ({ status: 200, body: await webhookEvent(db, params.event_id ?? '', caller !== 'viewer') }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/entries/:entry_id',
      access: 'admin',
      tag: 'admin',
      summary: 'One ledger entry (as reconciliation findings name them) with its account',
      responses: {
        200: answer('the entry with the account it belongs to', entryWithAccountSchema),
        ...refusals(['entry_not_found', 'no ledger entry with this id (an id not of the form entry_N included)']),
      },
      handler: async ({ params }) => ({ status: 200, body: await ledgerEntry(db, params.entry_id ?? '') }),
    }),
  ];
}
