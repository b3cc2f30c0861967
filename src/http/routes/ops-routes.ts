import { z } from 'zod';
import type { Catalog } from '../../billing/catalog.js';
import type { Database } from '../../db/database.js';
import { accountIdSchema, reasonLengthMax } from '../../ledger/commands.js';
import { redactSinkName } from '../../ops/alert-sinks.js';
import { erasePersonalData, exportAccount, exportedTables, type KeyedDigest } from '../../ops/gdpr.js';
import { reconcile } from '../../ops/reconcile.js';
import type { StripeGateway } from '../../stripe/gateway.js';
import { creditsSchema, creditsSumSchema, jsonObjectSchema, timestampSchema } from '../entities.js';
import { exactSum } from '../../dashboard/reads.js';
import { answer, refusals } from '../responses.js';
import { accountIdParam, defineRoute, type RouteDefinition } from '../route.js';
import { maskPerson } from '../viewer-masks.js';

/** The operators' calls: reconciliation, alerts, export and erasure (all with the admin key). */
export interface OperationsRouteDependencies {
  db: Database;
  catalog: Catalog;
  gateway: StripeGateway | undefined;
  /** Keys erasure pseudonyms with the fingerprint secret. */
  digest: KeyedDigest;
}

const accountId = accountIdParam;

export const alertsListSizeMax = 500;

export const accountsPageSizeMax = 200;

const findingSchema = z.object({
  check: z.string(),
  account_id: z.string().nullable(),
  message: z.string(),
  entry_ids: z.array(z.string()),
  grant_ids: z.array(z.string()).optional(),
  stripe_ids: z.array(z.string()).optional(),
});

const reconciliationSummarySchema = z.object({
  accounts: creditsSchema,
  entries: creditsSchema,
  duration_ms: z.int().min(0),
  checks: z.record(z.string(), z.int().min(0)),
});

const reconciliationReportSchema = z.object({
  run_id: z.int().positive(),
  started_at: timestampSchema,
  finished_at: timestampSchema,
  with_stripe: z.boolean(),
  finding_count: z.int().min(0),
  findings: z.array(findingSchema),
  summary: reconciliationSummarySchema,
});

// A run's row as stored: a running or failed run has no count and an empty summary.
const reconciliationRunSchema = z.object({
  run_id: z.int().positive(),
  trigger: z.enum(['cli', 'api', 'schedule']),
  with_stripe: z.boolean(),
  status: z.enum(['running', 'done', 'failed']),
  finding_count: z.int().min(0).nullable(),
  findings: z.array(findingSchema),
  summary: z.union([reconciliationSummarySchema, z.object({})]),
  error: z.string().nullable(),
  started_at: timestampSchema,
  finished_at: timestampSchema.nullable(),
});

const alertSchema = z.object({
  id: z.int().positive(),
  key: z.string(),
  kind: z.string(),
  severity: z.enum(['info', 'warning', 'critical']),
  message: z.string(),
  details: jsonObjectSchema,
  account_id: z.string().nullable(),
  count: z.int().positive(),
  first_at: timestampSchema,
  last_at: timestampSchema,
  resolved_at: timestampSchema.nullable(),
  deliveries: z.array(
    z.object({
      sink: z.string(),
      action: z.enum(['trigger', 'resolve']),
      delivered_at: timestampSchema.nullable(),
      attempts: z.int().min(0),
      last_error: z.string().nullable(),
    }),
  ),
});

// The export is the account's rows as stored, table by table (the tables gdpr.ts reads, so a
// table added there is described here); their columns follow the database's schema.
const exportSchema = z.object({
  exported_at: timestampSchema,
  account: jsonObjectSchema,
  ...Object.fromEntries(exportedTables.map((table) => [table, z.array(jsonObjectSchema)])),
});

const erasedSchema = z.object({
  email: z.boolean(),
  name: z.boolean(),
  metadata: z.boolean(),
  device_fingerprint: z.boolean(),
  entries: z.int().min(0),
  webhook_events: z.int().min(0),
});

export function operationsRoutes(dependencies: OperationsRouteDependencies): RouteDefinition[] {
  return [
    defineRoute({
      method: 'POST',
      url: '/v1/admin/reconcile',
      access: 'admin',
      tag: 'admin',
      summary: 'Run a reconciliation now and answer its report (never changes the ledger)',
      body: z.strictObject({ stripe: z.boolean().default(false) }),
      responses: {
        200: answer('the report', reconciliationReportSchema),
        ...refusals('reconciliation_running', 'stripe_error', [
          'stripe_unavailable',
          'Stripe cannot be reached or is not configured (stripe: true needs STRIPE_SECRET_KEY)',
        ]),
      },
      handler: async ({ body }) => ({
        status: 200,
        body: await reconcile(dependencies.db, {
          trigger: 'api',
          stripe: body.stripe,
          gateway: dependencies.gateway,
          catalog: dependencies.catalog,
        }),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/reconciliations',
      access: 'admin',
      tag: 'admin',
      summary: 'Recent reconciliation runs, newest first',
      query: z.strictObject({ limit: z.coerce.number().int().min(1).max(100).default(20) }),
      responses: {
        200: answer('the runs, newest first (a running one has no findings yet)', z.object({ runs: z.array(reconciliationRunSchema) })),
      },
      handler: async ({ query }) => {
        const { rows } = await dependencies.db.query(
          `select id as run_id, trigger, with_stripe, status, finding_count, findings, summary, error,
             tally_iso(started_at) as started_at, tally_iso(finished_at) as finished_at
           from reconciliation_runs order by started_at desc limit $1`,
          [query.limit],
        );
        return { status: 200, body: { runs: rows } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/alerts',
      access: 'admin',
      tag: 'admin',
      summary: 'Alerts, newest first, with how often each repeated in its window',
      query: z.strictObject({ limit: z.coerce.number().int().min(1).max(alertsListSizeMax).default(100) }),
      responses: {
        200: answer(
          'the alerts, each delivery naming its sink by kind, host and a digest, never by its URL',
          z.object({ alerts: z.array(alertSchema) }),
        ),
      },
      handler: async ({ query }) => {
        const { rows } = await dependencies.db.query(
          `select a.id, a.alert_key as key, a.kind, a.severity, a.message, a.details, a.account_id, a.count,
             tally_iso(a.first_at) as first_at, tally_iso(a.last_at) as last_at, tally_iso(a.resolved_at) as resolved_at,
             coalesce((select jsonb_agg(jsonb_build_object('sink', d.sink, 'action', d.action, 'delivered_at', tally_iso(d.delivered_at), 'attempts', d.attempts, 'last_error', d.last_error)
                                 order by d.sink, d.action desc)
                       from alert_deliveries d where d.alert_id = a.id), '[]'::jsonb) as deliveries
           from alerts a order by a.last_at desc, a.id desc limit $1`,
          [query.limit],
        );
        // Sinks are named without their URLs: a Slack webhook URL is a secret of its own.
        const alerts = (rows as { deliveries: { sink: string }[] }[]).map((row) => ({
          ...row,
          deliveries: row.deliveries.map((delivery) => ({ ...delivery, sink: redactSinkName(delivery.sink) })),
        }));
        return { status: 200, body: { alerts } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/accounts',
      access: 'admin',
      tag: 'admin',
      summary: 'Accounts with their balances, by id, paged; `search` matches the start of the id',
      query: z.strictObject({
        limit: z.coerce.number().int().min(1).max(accountsPageSizeMax).default(50),
        after: accountIdSchema.optional(),
        search: z.string().min(1).max(128).optional(),
      }),
      responses: {
        200: answer(
          'a page of accounts; next_after is null on the last page',
          z.object({
            accounts: z.array(
              z.object({
                id: z.string(),
                name: z.string().nullable(),
                available: creditsSchema,
                held: creditsSchema,
                debt: creditsSchema,
                flagged: z.boolean(),
                updated_at: timestampSchema,
              }),
            ),
            next_after: z.string().nullable(),
          }),
        ),
      },
      handler: async ({ query, caller }) => {
        const { rows } = await dependencies.db.query<{ id: string; name: string | null }>(
          `select id, name, available, held, debt, flagged, tally_iso(updated_at) as updated_at from accounts
           where ($1::text is null or id > $1) and ($2::text is null or starts_with(id, $2))
           order by id limit $3`,
          [query.after ?? null, query.search ?? null, query.limit + 1],
        );
        const page = rows.slice(0, query.limit).map((row) => maskPerson(caller, row));
        return {
          status: 200,
          body: { accounts: page, next_after: rows.length > query.limit ? (page[page.length - 1]?.id ?? null) : null },
        };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/credit-history',
      access: 'admin',
      tag: 'admin',
      summary: 'Credits granted and spent per day (UTC), for the charts',
      query: z.strictObject({ days: z.coerce.number().int().min(1).max(366).default(30), until: z.iso.date().optional() }),
      responses: {
        200: answer(
          'one row per day, the last day being `until` (default today); a sum beyond the safe integer range is given as a decimal string',
          z.object({ days: z.array(z.object({ day: z.iso.date(), granted: creditsSumSchema, spent: creditsSumSchema })) }),
        ),
      },
      handler: async ({ query }) => {
        const { rows } = await dependencies.db.query(
          `select to_char(d.day, 'YYYY-MM-DD') as day,
             coalesce(sum(e.amount) filter (where e.kind in ('grant', 'restore') or (e.kind = 'adjustment' and e.amount > 0)), 0)::text as granted,
             (coalesce(-sum(e.amount) filter (where e.kind = 'usage'), 0)
               + coalesce(sum((e.reference->>'captured')::numeric) filter (where e.kind = 'capture'), 0))::text as spent
           from generate_series(coalesce($2::date, (now() at time zone 'UTC')::date) - ($1::int - 1), coalesce($2::date, (now() at time zone 'UTC')::date), interval '1 day') as d(day)
           left join entries e on e.created_at >= d.day at time zone 'UTC' and e.created_at < (d.day + interval '1 day') at time zone 'UTC'
           group by d.day order by d.day`,
          [query.days, query.until ?? null],
        );
        return {
          status: 200,
          body: {
            days: (rows as { day: string; granted: string; spent: string }[]).map((row) => ({
              day: row.day,
              granted: exactSum(row.granted),
              spent: exactSum(row.spent),
            })),
          },
        };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/export',
      access: 'admin',
      personalData: true,
      tag: 'admin',
      summary: 'Every record Tally keeps on the account (GDPR access)',
      responses: { 200: answer('every record Tally keeps on the account, by table', exportSchema), ...refusals('account_not_found') },
      handler: async ({ params }) => ({ status: 200, body: await exportAccount(dependencies.db, accountId(params)) }),
    }),
    defineRoute({
      method: 'DELETE',
      url: '/v1/accounts/:id/personal-data',
      access: 'admin',
      tag: 'admin',
      summary: 'Erase personal data; ledger amounts stay, pseudonymized',
      body: z.strictObject({ reason: z.string().min(1).max(reasonLengthMax) }),
      responses: {
        200: answer(
          'what was erased (by field, never by value)',
          z.object({
            account_id: z.string(),
            pseudonym: z.string(),
            erased: erasedSchema,
            /** Erasure cannot remove the id; it says whether the id looks like personal data itself. */
            account_id_kept: z.object({ looks_personal: z.boolean(), note: z.string() }),
          }),
        ),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await erasePersonalData(dependencies.db, accountId(params), body.reason, dependencies.digest),
      }),
    }),
  ];
}
