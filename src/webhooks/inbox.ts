import type { Database } from '../db/database.js';
import { GroupCommit } from '../db/group-commit.js';
import type { VerifiedEvent } from '../stripe/signature.js';

/**
 * The webhook inbox. An event is stored keyed by its id before Tally answers 2xx; a duplicate
 * delivery changes nothing. The worker applies stored events later.
 */
export type StoreOutcome = 'stored' | 'duplicate';

export interface ReceivedEvent {
  event: VerifiedEvent;
  /** The body exactly as Stripe signed it. */
  rawBody: Buffer;
}

export async function storeEvent(db: Database, event: VerifiedEvent, rawBody: Buffer): Promise<StoreOutcome> {
  const text = rawBody.toString('utf8');
  const result = await db.query(
    `insert into webhook_events (id, type, api_version, created, payload, raw_body)
     values ($1, $2, $3, to_timestamp($4), coalesce($5, $6)::jsonb, $6)
     on conflict (id) do nothing`,
    [event.id, event.type, event.api_version, event.created, storableVersion(text), text],
  );
  return result.rowCount === 1 ? 'stored' : 'duplicate';
}

/**
 * Stores many events in one statement, so one commit and one WAL flush. The rows go in id order
 * (two batches holding the same ids, in two processes, wait for each other instead of
 * deadlocking), and an id that appears twice in the batch is written once: its first delivery
 * is the one stored, the others answer as duplicates. Answers one outcome per event, in order.
 */
export async function storeEvents(db: Database, received: ReceivedEvent[]): Promise<StoreOutcome[]> {
  const firstOfId = new Map<string, { event: VerifiedEvent; text: string }>();
  for (const { event, rawBody } of received) {
    if (!firstOfId.has(event.id)) firstOfId.set(event.id, { event, text: rawBody.toString('utf8') });
  }
  const ids = [...firstOfId.keys()].sort();
  const rows = ids.map((id) => firstOfId.get(id) as { event: VerifiedEvent; text: string });
  const result = await db.query<{ id: string }>(
    `insert into webhook_events (id, type, api_version, created, payload, raw_body)
     select id, type, api_version, to_timestamp(created), coalesce(storable, raw_body)::jsonb, raw_body
     from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[]) as received (id, type, api_version, created, storable, raw_body)
     order by id
     on conflict (id) do nothing
     returning id`,
    [
      ids,
      rows.map((row) => row.event.type),
      rows.map((row) => row.event.api_version),
      rows.map((row) => row.event.created),
      rows.map((row) => storableVersion(row.text)),
      rows.map((row) => row.text),
    ],
  );
  const stored = new Set(result.rows.map((row) => row.id));
  const answered = new Set<string>();
  return received.map(({ event }) => {
    const first = !answered.has(event.id);
    answered.add(event.id);
    return first && stored.has(event.id) ? 'stored' : 'duplicate';
  });
}

/** Events stored in one statement at most; a Stripe event's body is a few kilobytes. */
export const intakeBatchSizeMax = 256;
// Few batches in flight is what makes batches form (as for usage): deliveries arriving while
// they commit queue up and share the next commit.
export const intakeBatchesConcurrentMax = 4;

/**
 * Webhook intake with group commit: deliveries that arrive while earlier ones are being stored
 * go together in the next statement (db/group-commit.ts). Each delivery's promise settles only
 * once its row is committed, so the route still answers 2xx only for a stored event; a batch
 * that fails is written again member by member, so one event that cannot be stored fails alone.
 */
export class WebhookIntake {
  private readonly group: GroupCommit<ReceivedEvent, StoreOutcome>;

  constructor(
    db: Database,
    options: { batchSizeMax?: number; concurrentBatchesMax?: number; onBatchError?: (error: unknown, batchSize: number) => void } = {},
  ) {
    this.group = new GroupCommit(
      { writeBatch: (received) => storeEvents(db, received), writeOne: ({ event, rawBody }) => storeEvent(db, event, rawBody) },
      {
        batchSizeMax: options.batchSizeMax ?? intakeBatchSizeMax,
        concurrentBatchesMax: options.concurrentBatchesMax ?? intakeBatchesConcurrentMax,
        onBatchError: options.onBatchError,
      },
    );
  }

  store(event: VerifiedEvent, rawBody: Buffer): Promise<StoreOutcome> {
    return this.group.submit({ event, rawBody });
  }

  /** Deliveries waiting for the next batch. */
  get queuedCount(): number {
    return this.group.queuedCount;
  }
}

/**
 * The JSON text as jsonb can hold it: jsonb refuses the NUL character and a lone UTF-16
 * surrogate (`\ud800` with no partner), both valid JSON that a name or an address typed on a
 * broken keyboard can carry. Each such character, in strings and keys, becomes U+FFFD; a
 * webhook must be stored whatever its strings hold, and its exact body is kept beside it. Text
 * with neither escape (nearly every event) is passed through untouched.
 */
/**
 * A body goes to the database once and its payload is read from it there, unless it had to be
 * made storable as jsonb first: then that version goes beside it, else null.
 */
function storableVersion(body: string): string | null {
  const storable = jsonbSafe(body);
  return storable === body ? null : storable;
}

export function jsonbSafe(json: string): string {
  if (!/\\u(?:0000|[dD][89a-fA-F])/.test(json)) return json;
  return JSON.stringify(wellFormed(JSON.parse(json)));
}

function wellFormed(value: unknown): unknown {
  if (typeof value === 'string')
    // biome-ignore lint/suspicious/noControlCharactersInRegex: PostgreSQL's jsonb refuses NUL, which is why it is replaced
    return value.replace(/\u0000|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
  if (Array.isArray(value)) return value.map(wellFormed);
  if (value !== null && typeof value === 'object')
    return Object.fromEntries(Object.entries(value).map(([key, member]) => [wellFormed(key), wellFormed(member)]));
  return value;
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
