import type { Database } from '../db/database.js';
import type { VerifiedEvent } from './signature.js';

/**
 * The webhook inbox. An event is stored in one statement keyed by its id before Tally answers
 * 2xx; a duplicate delivery changes nothing. The worker applies stored events later.
 */
export async function storeEvent(db: Database, event: VerifiedEvent, rawBody: Buffer): Promise<'stored' | 'duplicate'> {
  const text = rawBody.toString('utf8');
  const result = await db.query(
    `insert into webhook_events (id, type, api_version, created, payload, raw_body)
     values ($1, $2, $3, to_timestamp($4), $5::jsonb, $6)
     on conflict (id) do nothing`,
    [event.id, event.type, event.api_version, event.created, jsonbSafe(text), text],
  );
  return result.rowCount === 1 ? 'stored' : 'duplicate';
}

/**
 * The JSON text with every escaped NUL (`\u0000`, not an escaped backslash before `u0000`)
 * replaced by U+FFFD: jsonb cannot hold NUL, and a webhook must be stored whatever its strings
 * hold. The exact body is kept beside it.
 */
export function jsonbSafe(json: string): string {
  return json.includes('\\u0000') ? json.replace(/(?<!\\)((?:\\\\)*)\\u0000/g, '$1\\ufffd') : json;
}

export interface InboxRow {
  id: string;
  type: string;
  status: string;
  attempts: number;
  created: string;
  received_at: string;
  next_attempt_at: string;
  processed_at: string | null;
  last_error: string | null;
  /** Why the event was ignored: not Tally's (a foreign price, customer or payment), unattributed, or no effect for its type. */
  ignored_reason: string | null;
  account_id: string | null;
}

export const inboxListSizeMax = 500;

export async function listEvents(db: Database, filter: { status?: string; type?: string; limit: number }): Promise<InboxRow[]> {
  const result = await db.query<InboxRow>(
    `select id, type, status, attempts, tally_iso(created) as created, tally_iso(received_at) as received_at,
       tally_iso(next_attempt_at) as next_attempt_at, tally_iso(processed_at) as processed_at, last_error, ignored_reason, account_id
     from webhook_events
     where ($1::text is null or status = $1) and ($2::text is null or type = $2)
     order by received_at desc, id limit $3`,
    [filter.status ?? null, filter.type ?? null, filter.limit],
  );
  return result.rows;
}
