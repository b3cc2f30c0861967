import { z } from 'zod';
import type { Database } from '../db/database.js';
import { TallyError, accountNotFound } from '../errors.js';
import type { StripeGateway } from '../stripe/gateway.js';
import { idOf } from '../stripe/shapes.js';
import type { Catalog, CreditPack } from './catalog.js';

/**
 * Auto top-up's setting: which pack to buy, below which threshold, at most how many times a
 * UTC month. The rest of auto top-up: the request a spend writes (tally_request_top_up in
 * db/functions/85-top-ups.sql), the payer job (top-up-payer.ts) and what a payment's outcome
 * does (top-up-outcomes.ts).
 */
export const autoTopUpInputSchema = z.strictObject({
  enabled: z.boolean(),
  threshold: z.int().positive().max(Number.MAX_SAFE_INTEGER),
  pack_id: z.string().min(1).max(64),
  max_per_month: z.int().min(1).max(1000),
});
export type AutoTopUpInput = z.infer<typeof autoTopUpInputSchema>;

export const packNotFound = (packId: string): TallyError =>
  new TallyError('pack_not_found', 404, `no credit pack with id ${packId} in the catalog`);
const noPaymentMethod = (message: string): TallyError => new TallyError('no_payment_method', 409, message);

export function findPack(catalog: Catalog, packId: string): CreditPack {
  const pack = catalog.credit_packs.find((candidate) => candidate.id === packId);
  if (pack === undefined) throw packNotFound(packId);
  return pack;
}

/** The customer's default payment method, or undefined when it has none (or was deleted). */
export async function defaultPaymentMethod(gateway: StripeGateway, customerId: string): Promise<string | undefined> {
  const customer = await gateway.retrieveCustomer(customerId);
  if ('deleted' in customer && customer.deleted === true) return undefined;
  return idOf((customer as { invoice_settings?: { default_payment_method?: unknown } }).invoice_settings?.default_payment_method);
}

export interface TopUpDependencies {
  db: Database;
  catalog: Catalog;
  gateway: StripeGateway | undefined;
  clock?: (() => Date) | undefined;
}

/**
 * PUT /v1/accounts/{id}/auto-top-up. Enabling it asks Stripe that the customer can be charged.
 * Turning it on again after it was off (by the customer, or by three failures in a row) starts
 * the failures in a row from 0; the month's count is the top-ups themselves, which no save
 * changes.
 */
export async function setAutoTopUp(
  dependencies: TopUpDependencies,
  accountId: string,
  input: AutoTopUpInput,
): Promise<Record<string, unknown>> {
  findPack(dependencies.catalog, input.pack_id);
  const { rows } = await dependencies.db.query<{ stripe_customer_id: string | null }>(
    'select stripe_customer_id from accounts where id = $1',
    [accountId],
  );
  if (rows[0] === undefined) throw accountNotFound(accountId);
  if (input.enabled) {
    const customerId = rows[0].stripe_customer_id;
    if (customerId === null)
      throw noPaymentMethod(`account ${accountId} has no Stripe customer yet; a first purchase or subscription links one`);
    if (dependencies.gateway === undefined) throw noPaymentMethod('Stripe is not configured (STRIPE_SECRET_KEY)');
    if ((await defaultPaymentMethod(dependencies.gateway, customerId)) === undefined) {
      throw noPaymentMethod(`Stripe customer ${customerId} has no default payment method (invoice_settings.default_payment_method)`);
    }
  }
  const now = dependencies.clock?.() ?? null;
  return dependencies.db.withTransaction(async (client) => {
    await client.query('select 1 from accounts where id = $1 for update', [accountId]);
    const { rows: saved } = await client.query(
      `insert into auto_top_ups (account_id, enabled, threshold, pack_id, max_per_month, updated_at) values ($1, $2, $3, $4, $5, coalesce($6::timestamptz, now()))
       on conflict (account_id) do update set enabled = excluded.enabled, threshold = excluded.threshold, pack_id = excluded.pack_id,
         max_per_month = excluded.max_per_month, updated_at = excluded.updated_at,
         failures_in_row = case when excluded.enabled and not auto_top_ups.enabled then 0 else auto_top_ups.failures_in_row end
       returning account_id, enabled, threshold, pack_id, max_per_month, failures_in_row, tally_iso(updated_at) as updated_at`,
      [accountId, input.enabled, input.threshold, input.pack_id, input.max_per_month, now],
    );
    // Saving never charges and never touches a top-up in flight (SPEC): the next qualifying spend
    // asks for one, and a top-up in flight when auto top-up is turned off still grants what it
    // charged (one not yet sent to Stripe is cancelled by the payer job).
    await client.query('update accounts set top_up_threshold = $2 where id = $1', [accountId, input.enabled ? input.threshold : null]);
    return saved[0] as Record<string, unknown>;
  });
}

/**
 * The auto top-up setting as saved, in the PUT's shape; an account that never saved one reads
 * as turned off, with null for what was never chosen.
 */
export async function readAutoTopUp(db: TopUpDependencies['db'], accountId: string): Promise<Record<string, unknown>> {
  const { rows } = await db.query<Record<string, unknown>>(
    `select a.id as account_id, coalesce(t.enabled, false) as enabled, t.threshold, t.pack_id, t.max_per_month,
       coalesce(t.failures_in_row, 0) as failures_in_row, tally_iso(t.updated_at) as updated_at
     from accounts a left join auto_top_ups t on t.account_id = a.id where a.id = $1`,
    [accountId],
  );
  if (rows[0] === undefined) throw accountNotFound(accountId);
  return rows[0];
}
