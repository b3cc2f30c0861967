import type { Database } from '../db/database.js';

/**
 * The event log the app reads: `{id, sequence, type, account_id, created_at, data}` in sequence
 * order. Triggers write events in the transaction of their change (migration 0014); a sequence
 * is handed out only once every older transaction has finished (tally_sequence_events), so a
 * reader paging with `after` never skips an event that commits later.
 */
export interface EventRecord {
  id: string;
  sequence: number;
  type: string;
  account_id: string | null;
  created_at: string;
  data: Record<string, unknown>;
}

export const eventsPageSizeMax = 500;
/** How many events one numbering step takes; a larger backlog takes several steps. */
export const sequenceBatchSizeMax = 5000;

/** Every event type Tally writes (SPEC), for endpoint filters. */
export const eventTypes = [
  'grant.created',
  'grant.expired',
  'credits.clawed_back',
  'credits.restored',
  'balance.low',
  'balance.depleted',
  'account.in_debt',
  'subscription.updated',
  'trial.granted',
  'trial.refused',
  'hold.expired',
  'topup.succeeded',
  'topup.failed',
  'spend_limit.reached',
] as const;

export const eventColumns = `'event_' || e.id as id, e.sequence, e.type, e.account_id, tally_iso(e.created_at) as created_at, e.data`;

/** Numbers what can be numbered now; answers how many events it numbered. */
export async function sequenceEvents(db: Database): Promise<number> {
  let total = 0;
  for (;;) {
    const { rows } = await db.query<{ count: number }>('select tally_sequence_events($1) as count', [sequenceBatchSizeMax]);
    const count = rows[0]?.count ?? 0;
    total += count;
    if (count < sequenceBatchSizeMax) return total;
  }
}

export async function readEvents(
  db: Database,
  query: { after: number; limit: number; accountId?: string | undefined },
): Promise<{ events: EventRecord[]; next_after: number }> {
  await sequenceEvents(db);
  const { rows } = await db.query<EventRecord>(
    `select ${eventColumns} from events e
     where e.sequence > $1 and ($3::text is null or e.account_id = $3)
     order by e.sequence limit $2`,
    [query.after, query.limit, query.accountId ?? null],
  );
  const events = rows.map((row) => ({ ...row, sequence: Number(row.sequence) }));
  // Where the next page starts: past this page, or where the reader already was.
  const last = events[events.length - 1];
  return { events, next_after: last === undefined ? query.after : last.sequence };
}
