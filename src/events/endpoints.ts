import { randomBytes } from 'node:crypto';
import type { Database } from '../db/database.js';
import { TallyError, invalidRequest } from '../errors.js';
import { checkDestination, DestinationRefused, DestinationUnresolved, type DestinationPolicy } from './destinations.js';

/**
 * The app's webhook endpoints. Each has its own signing secret (Standard Webhooks' `whsec_`
 * form: base64 of 24 random bytes), shown once when the endpoint is created. An endpoint that
 * failed for its whole retry window is disabled; enabling it again resumes its deliveries where
 * they stopped, in order, since they were kept (and new events kept being added) meanwhile.
 */
/**
 * What is wrong with an endpoint URL as written: https (plain http is judged with its host, in
 * checkDestination), and no credentials in the URL.
 */
function endpointUrlProblem(value: string): string | undefined {
  if (!URL.canParse(value)) return 'not a URL';
  const url = new URL(value);
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return 'must be https';
  if (url.username !== '' || url.password !== '') return 'must not carry credentials';
  return undefined;
}

/**
 * The host of a new endpoint is checked as a delivery would check it (destinations.ts). A name
 * that does not resolve yet is accepted: nothing can be sent to it, and each delivery checks
 * the addresses it resolves to then, so it cannot reach a private address later either.
 */
async function destinationProblem(value: string, policy: DestinationPolicy): Promise<string | undefined> {
  try {
    await checkDestination(new URL(value), policy);
    return undefined;
  } catch (error) {
    if (error instanceof DestinationRefused) return error.reason;
    if (error instanceof DestinationUnresolved) return new URL(value).protocol === 'http:' ? 'plain http only to this machine' : undefined;
    throw error;
  }
}

export const endpointNotFound = (id: string): TallyError => new TallyError('endpoint_not_found', 404, `no webhook endpoint with id ${id}`);

/**
 * Deliveries record only an error class (delivery.ts); rows written before that may hold the
 * network's own words, which are shown as the class they fall in.
 */
const lastErrorClass = `case when d.last_error is null or d.last_error ~ '^(address_not_allowed|dns_failed|timeout|connection_failed|HTTP [0-9]{3})$'
  then d.last_error else 'connection_failed' end`;

const endpointColumns = `'we_' || w.id as id, w.url, w.event_types, w.status, tally_iso(w.disabled_at) as disabled_at, w.disabled_reason, tally_iso(w.created_at) as created_at,
  (select count(*) from event_deliveries d where d.endpoint_id = w.id and d.delivered_at is null)::bigint as pending,
  (select jsonb_build_object('sequence', d.sequence, 'account_id', nullif(d.account_id, ''), 'attempts', d.attempts, 'first_failed_at', tally_iso(d.first_failed_at),
     'next_attempt_at', tally_iso(d.next_attempt_at), 'last_error', ${lastErrorClass})
   from event_deliveries d where d.endpoint_id = w.id and d.delivered_at is null and d.attempts > 0 order by d.sequence limit 1) as oldest_failing,
  (select max(d.sequence) from event_deliveries d where d.endpoint_id = w.id and d.delivered_at is not null) as last_delivered_sequence`;

/** `we_12` → 12; anything else is unknown. */
function endpointNumber(id: string): number {
  const match = /^we_([1-9][0-9]{0,15})$/.exec(id);
  if (match?.[1] === undefined) throw endpointNotFound(id);
  return Number(match[1]);
}

export async function createEndpoint(
  db: Database,
  input: { url: string; event_types?: string[] | undefined },
  destinations: DestinationPolicy,
): Promise<{ id: string; url: string; event_types: string[] | null; secret: string }> {
  const problem = endpointUrlProblem(input.url) ?? (await destinationProblem(input.url, destinations));
  if (problem !== undefined) throw invalidRequest('url', problem);
  const secret = `whsec_${randomBytes(24).toString('base64')}`;
  const { rows } = await db.query<{ id: string; url: string; event_types: string[] | null }>(
    `insert into webhook_endpoints (url, secret, event_types) values ($1, $2, $3) returning 'we_' || id as id, url, event_types`,
    [input.url, secret, input.event_types === undefined ? null : [...new Set(input.event_types)]],
  );
  const row = rows[0];
  if (row === undefined) throw new Error('endpoint insert returned no row');
  return { ...row, secret };
}

export async function listEndpoints(db: Database): Promise<Record<string, unknown>[]> {
  const { rows } = await db.query(`select ${endpointColumns} from webhook_endpoints w order by w.id`);
  return rows;
}

export async function getEndpoint(db: Database, id: string): Promise<Record<string, unknown>> {
  const { rows } = await db.query(`select ${endpointColumns} from webhook_endpoints w where w.id = $1`, [endpointNumber(id)]);
  if (rows[0] === undefined) throw endpointNotFound(id);
  return rows[0];
}

export async function deleteEndpoint(db: Database, id: string): Promise<{ id: string; deleted: true }> {
  const { rowCount } = await db.query('delete from webhook_endpoints where id = $1', [endpointNumber(id)]);
  if (rowCount === 0) throw endpointNotFound(id);
  return { id, deleted: true };
}

/**
 * Enables an endpoint again. Its undelivered events start a fresh retry window now, oldest first
 * per account: the endpoint resumes where it stopped.
 */
export async function enableEndpoint(db: Database, id: string): Promise<Record<string, unknown>> {
  const number = endpointNumber(id);
  await db.withTransaction(async (client) => {
    const { rowCount } = await client.query(
      `update webhook_endpoints set status = 'enabled', disabled_at = null, disabled_reason = null where id = $1`,
      [number],
    );
    if (rowCount === 0) throw endpointNotFound(id);
    await client.query(
      `update event_deliveries set attempts = 0, first_failed_at = null, next_attempt_at = '-infinity' where endpoint_id = $1 and delivered_at is null`,
      [number],
    );
  });
  return getEndpoint(db, id);
}
