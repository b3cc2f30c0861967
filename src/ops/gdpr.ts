import type { Database } from '../db/database.js';
import { accountNotFound } from '../errors.js';

/**
 * GDPR: export every record Tally keeps on an account, and erase its personal data. Erasure
 * replaces the name with a pseudonym and removes the email, metadata, device fingerprint hash,
 * usage descriptions and metadata in entries, and the Stripe payloads of its events; ledger
 * amounts, keys and Stripe ids stay for accounting, and trial claims stay (as hashes) so that
 * erasure does not reopen a trial. The erasure is itself audited.
 */
/**
 * The account's webhook events: those applied to it, and those stored without an account
 * (ignored, failed, pending) that name its Stripe customer, one of its subscriptions or its
 * payments. Their payloads hold the customer's email, name and address too.
 */
const eventsOfAccount = `(w.account_id = $1 or (w.account_id is null and (
    coalesce(w.payload->'data'->'object'->>'customer', w.payload->'data'->'object'->'customer'->>'id') = (select stripe_customer_id from accounts where id = $1)
    or w.payload->'data'->'object'->>'id' in (select id from subscriptions where account_id = $1 union all select stripe_customer_id from accounts where id = $1)
    or coalesce(w.payload->'data'->'object'->>'subscription', w.payload->'data'->'object'->'parent'->'subscription_details'->>'subscription') in (select id from subscriptions where account_id = $1)
    or w.payload->'data'->'object'->>'payment_intent' in (select payment_intent from payments where account_id = $1)
    or w.payload->'data'->'object'->>'client_reference_id' = $1)))`;

/** The parts of a Stripe object that hold personal data, removed on erasure from events that must still be applied. */
const personalFields = [
  'customer_details',
  'customer_email',
  'customer_name',
  'customer_address',
  'customer_phone',
  'customer_shipping',
  'shipping_details',
  'shipping',
  'billing_details',
  'receipt_email',
];
const scrubPersonalFields = personalFields.map((field) => `#- '{data,object,${field}}'`).join(' ');
/**
 * Metadata of a pending event loses every key but Tally's own (`tally_account_id`,
 * `tally_pack_id`, `tally_top_up`, ...): those attribute the payment to the account, and without
 * them a pack or top-up paid before the erasure would be ignored. The merchant's other keys may
 * hold anything, so they go.
 */
const keepTallyMetadata = `case when jsonb_typeof(w.payload #> '{data,object,metadata}') = 'object' then jsonb_set(w.payload ${scrubPersonalFields},
    '{data,object,metadata}', (select coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
      from jsonb_each(w.payload #> '{data,object,metadata}') where key like 'tally\\_%'))
  else w.payload ${scrubPersonalFields} end`;

const exportQueries: Record<string, string> = {
  grants: `select to_jsonb(g) - 'account_id' as row from grants g where account_id = $1 order by id`,
  entries: `select tally_entry_json(e) as row from entries e where account_id = $1 order by id`,
  // A priced hold's exact cost as a decimal string, never a JSON number (which a reader would parse as a float).
  holds: `select to_jsonb(h) - 'account_id' || jsonb_build_object('cost', trim_scale(h.cost)::text) as row from holds h where account_id = $1 order by id`,
  subscriptions: `select to_jsonb(s) - 'account_id' as row from subscriptions s where account_id = $1 order by event_created`,
  payments: `select to_jsonb(p) - 'account_id' as row from payments p where account_id = $1 order by id`,
  request_keys: `select jsonb_build_object('key', key, 'operation', operation, 'status_code', status_code, 'response', response, 'created_at', tally_iso(created_at)) as row from request_keys where account_id = $1 order by created_at`,
  webhook_events: `select jsonb_build_object('id', id, 'type', type, 'status', status, 'created', tally_iso(created), 'payload', payload) as row from webhook_events w where ${eventsOfAccount} order by created`,
  trial_claims: `select jsonb_build_object('kind', kind, 'value_hash', value_hash, 'subscription_id', subscription_id, 'created_at', tally_iso(created_at)) as row from trial_claims where account_id = $1`,
  trial_refusals: `select to_jsonb(r) - 'account_id' as row from trial_refusals r where account_id = $1`,
  alerts: `select to_jsonb(a) - 'account_id' as row from alerts a where account_id = $1 order by id`,
  audit_log: `select to_jsonb(l) - 'account_id' as row from audit_log l where account_id = $1 order by id`,
  spend_limits: `select to_jsonb(s) - 'account_id' as row from spend_limits s where account_id = $1`,
  // The rate card versions that priced the account's spends and holds, so that every priced charge
  // in the export can be recomputed from the export alone.
  rate_card_versions: `select tally_rate_card_version_json(v) as row from rate_card_versions v
    where (v.rate_card_id, v.version) in (
      select rate_card_id, rate_card_version from entries where account_id = $1 and meter is not null
      union select rate_card_id, rate_card_version from holds where account_id = $1 and meter is not null)
    order by v.rate_card_id, v.version`,
};

/** The tables an export answers besides the account itself, each as a list of rows. */
export const exportedTables = Object.keys(exportQueries);

export async function exportAccount(db: Database, accountId: string): Promise<Record<string, unknown>> {
  const account = await db.query<{ row: Record<string, unknown> }>(
    `select to_jsonb(a) || jsonb_build_object('carry', trim_scale(a.carry)::text) as row from accounts a where id = $1`,
    [accountId],
  );
  if (account.rows[0] === undefined) throw accountNotFound(accountId);
  const sections: Record<string, unknown> = { account: account.rows[0].row };
  for (const [name, sql] of Object.entries(exportQueries)) {
    sections[name] = (await db.query<{ row: unknown }>(sql, [accountId])).rows.map((row) => row.row);
  }
  return { exported_at: new Date().toISOString(), ...sections };
}

/** Keys a digest with TALLY_FINGERPRINT_SECRET (or the development secret kept in the database). */
export type KeyedDigest = (purpose: string, value: string) => string;

/**
 * The name an erased account keeps. It is keyed: an unkeyed hash of the account id would let
 * anyone with a database dump test guesses (an id is often an email) against erased accounts.
 */
export function pseudonymOf(accountId: string, digest: KeyedDigest): string {
  return `erased-${digest('erasure', accountId).slice(0, 16)}`;
}

/**
 * Erasure keeps the account id: every entry, hold, grant and Stripe object's metadata names the
 * account by it. An id that is an email therefore stays personal data after erasure, and the
 * report says so; the README recommends opaque ids for that reason. (Only emails are told
 * apart: a numeric id may be a phone number or a database's key, and guessing would cry wolf.)
 */
const emailLooking = /^[^@]+@[^@]+$/;

export function accountIdKept(accountId: string): { looks_personal: boolean; note: string } {
  const looksPersonal = emailLooking.test(accountId);
  return {
    looks_personal: looksPersonal,
    note: looksPersonal
      ? 'the account id is kept (the ledger and Stripe metadata name the account by it) and looks like an email: it is still personal data; give accounts opaque ids'
      : 'the account id is kept (the ledger and Stripe metadata name the account by it)',
  };
}

export async function erasePersonalData(
  db: Database,
  accountId: string,
  reason: string,
  digest: KeyedDigest,
): Promise<Record<string, unknown>> {
  return db.withTransaction(async (client) => {
    const { rows } = await client.query<{
      email: string | null;
      name: string | null;
      metadata: Record<string, unknown>;
      device_fingerprint_hash: string | null;
    }>('select email, name, metadata, device_fingerprint_hash from accounts where id = $1 for update', [accountId]);
    const before = rows[0];
    if (before === undefined) throw accountNotFound(accountId);
    const pseudonym = pseudonymOf(accountId, digest);
    await client.query(
      `update accounts set email = null, name = $2, metadata = '{}'::jsonb, device_fingerprint_hash = null, updated_at = now() where id = $1`,
      [accountId, pseudonym],
    );
    await client.query(`select set_config('tally.erasure', 'on', true)`);
    const entries = await client.query(
      `update entries set reference = reference - 'description' - 'metadata' where account_id = $1 and (reference ? 'description' or reference ? 'metadata')`,
      [accountId],
    );
    await client.query(`select set_config('tally.erasure', 'off', true)`);
    // Events already settled keep only their id and type; a pending one must still be applied, so
    // it loses the fields that hold personal data. The exact body goes with them.
    const events = await client.query(
      `update webhook_events w set raw_body = null,
         payload = case when w.status = 'pending' then ${keepTallyMetadata} else jsonb_build_object('id', w.id, 'type', w.type, 'erased', true) end
       where ${eventsOfAccount}`,
      [accountId],
    );
    await client.query(
      `update audit_log set before = before - 'email' - 'name' - 'metadata' - 'device_fingerprint_hash',
         after = after - 'email' - 'name' - 'metadata' - 'device_fingerprint_hash' where account_id = $1`,
      [accountId],
    );
    // What was erased is recorded by field name only, never by value.
    const erased = {
      email: before.email !== null,
      name: before.name !== null,
      metadata: Object.keys(before.metadata).length > 0,
      device_fingerprint: before.device_fingerprint_hash !== null,
      entries: entries.rowCount ?? 0,
      webhook_events: events.rowCount ?? 0,
    };
    await client.query(
      `insert into audit_log (account_id, actor, action, reason, before, after) values ($1, 'admin', 'erasure', $2, $3, $4)`,
      [accountId, reason, erased, { name: pseudonym }],
    );
    return { account_id: accountId, pseudonym, erased, account_id_kept: accountIdKept(accountId) };
  });
}
