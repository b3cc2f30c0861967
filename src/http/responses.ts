import { z } from 'zod';
import type { ErrorCode, ErrorStatus } from '../errors.js';

export type { ErrorCode } from '../errors.js';

/**
 * What a route may answer, declared beside its request schemas: for each status, a description
 * and the zod schema of the body (or its media type when the body is not JSON), and for a
 * refusal the error codes it may carry. The OpenAPI description is built from these, and a test
 * checks every real answer against it, so what a route says it answers is what it answers.
 */
export interface ResponseSpec {
  description: string;
  /** The JSON body; left out for a refusal (its codes make the schema) or a body that is not JSON. */
  schema?: z.ZodType;
  /** The media type of a body that is not JSON (the dashboard's page, Prometheus text). */
  contentType?: string;
  /** The error codes of a refusal, each answered as `{error: {code, message, ...details}}`. */
  codes?: ErrorCode[];
}

export type Responses = Record<number, ResponseSpec>;

interface ErrorSpec {
  status: number;
  /** When Tally answers it; the description of the refusal in OpenAPI. */
  description: string;
  /** Fields of the error object besides code and message. */
  details?: z.ZodRawShape;
  /** A refusal stored as a request key's first outcome: its replay carries `replayed: true`. */
  replayable?: true;
}

const credits = z.int().min(0).max(Number.MAX_SAFE_INTEGER);

/**
 * Every error code Tally answers (the catalog of src/errors.ts, which this must equal, code for
 * code and status for status), described with its details (SPEC's API table), so the client's
 * typed errors and the description cannot name a code the server does not have.
 */
export const errorCatalog = {
  invalid_request: { status: 400, description: 'a field is missing or wrong; `field` names it', details: { field: z.string() } },
  capture_exceeds_hold: { status: 400, description: 'the capture is larger than the hold (`held`)', details: { held: credits } },
  adjustment_exceeds_limit: {
    status: 400,
    description: "the adjustment moves more than the catalog's limits.admin_adjustment_credits_max (`limit`)",
    details: { limit: credits },
  },
  grant_exceeds_limit: {
    status: 400,
    description: "the grant gives more than the catalog's limits.admin_grant_credits_max (`limit`)",
    details: { limit: credits },
  },
  balance_limit_exceeded: {
    status: 400,
    description: 'the balance would pass 2^53 - 1 credits, the most a JSON number holds exactly (`limit`)',
    details: { limit: credits },
  },
  unknown_meter: {
    status: 400,
    description: 'the spend names a meter that the catalog (or its rate card) does not have (`meter`)',
    details: { meter: z.string() },
  },
  invalid_signature: { status: 400, description: 'the Stripe-Signature header does not match the body (nothing written)' },
  unauthorized: { status: 401, description: 'missing or wrong bearer key' },
  insufficient_credits: {
    status: 402,
    description: 'not enough credits available (`available`); the key keeps this answer',
    details: { available: credits },
    replayable: true,
  },
  spend_limit_exceeded: {
    status: 402,
    description:
      "the spend would pass the account's limit for the UTC day or month (`window`, `limit`, `spent`, and `resets_at` when the window starts again)",
    details: { window: z.enum(['day', 'month']), limit: credits, spent: credits, resets_at: z.iso.datetime() },
    replayable: true,
  },
  forbidden: { status: 403, description: 'the viewer key is read-only, or this call needs the admin key' },
  trial_not_eligible: {
    status: 403,
    description: 'the account, its email or its device had a trial, or the plan has none (`reason`)',
    details: {
      reason: z.enum([
        'account_had_trial',
        'email_had_trial',
        'device_had_trial',
        'card_had_trial',
        'payment_method_had_trial',
        'plan_has_no_trial',
      ]),
    },
  },
  meter_not_entitled: {
    status: 403,
    description:
      "the account's plan (`plan_id`, null for a price outside the catalog) does not include the spend's `meter`; nothing was spent, and the key keeps this answer",
    details: { meter: z.string(), plan_id: z.string().nullable() },
    replayable: true,
  },
  account_not_found: { status: 404, description: 'no account with this id' },
  hold_not_found: { status: 404, description: 'no hold with this id' },
  rate_card_not_found: { status: 404, description: 'no rate card with this id' },
  plan_not_found: { status: 404, description: 'no such plan (or interval) or credit pack in the catalog' },
  pack_not_found: { status: 404, description: 'no such credit pack in the catalog' },
  event_not_found: { status: 404, description: 'no stored Stripe event with this id' },
  entry_not_found: { status: 404, description: 'no ledger entry with this id' },
  endpoint_not_found: { status: 404, description: 'no webhook endpoint with this id' },
  idempotency_conflict: {
    status: 409,
    description: 'the idempotency key was first used with another request (another amount, operation or payload)',
    details: { idempotency_key: z.string() },
  },
  hold_not_pending: {
    status: 409,
    description: 'the hold was captured, voided or expired already (`status`)',
    details: { status: z.enum(['captured', 'voided', 'expired']) },
  },
  reconciliation_running: { status: 409, description: 'another reconciliation is running' },
  no_payment_method: { status: 409, description: 'enabling needs a linked Stripe customer with a default payment method' },
  request_timeout: {
    status: 408,
    description: 'the request (headers and body) did not arrive within the request timeout; the connection is closed and nothing was done',
  },
  payload_too_large: {
    status: 413,
    description: "the body is over the call's limit (`limit_bytes`)",
    details: { limit_bytes: z.int().positive().optional() },
  },
  uri_too_long: { status: 414, description: 'a path segment is longer than any id Tally accepts (255 characters)' },
  unsupported_media_type: { status: 415, description: 'the body is not application/json' },
  rate_limited: {
    status: 429,
    description: 'too many requests of this kind; retry after `retry_after_seconds` (also in Retry-After)',
    details: { retry_after_seconds: z.int().positive() },
  },
  internal_error: { status: 500, description: 'a bug; the operator has the details in the log' },
  stripe_error: { status: 502, description: 'Stripe refused a call (the detail is in the log, never in the answer)' },
  stripe_unavailable: {
    status: 503,
    description: 'Stripe cannot be reached, the circuit breaker is open, or Stripe is not configured; retry after Retry-After seconds',
  },
  stripe_not_configured: { status: 503, description: 'no webhook secret configured (STRIPE_WEBHOOK_SECRET)' },
  database_unavailable: {
    status: 503,
    description: 'the database cannot be reached; retry after Retry-After seconds with the same idempotency key',
  },
  database_busy: {
    status: 503,
    description:
      'the database took too long (a statement timeout, or a row lock held by other work past the lock timeout); nothing was written; retry after Retry-After seconds with the same idempotency key',
  },
} as const satisfies { [Code in ErrorCode]: ErrorSpec & { status: ErrorStatus<Code> } };

/** `insufficient_credits` → `InsufficientCreditsError`: the name of its schema in the description. */
export const errorSchemaName = (code: ErrorCode): string =>
  `${code
    .split('_')
    .map((word) => word.charAt(0).toUpperCase() + word.slice(1))
    .join('')}Error`;

const errorObjects = new Map<ErrorCode, z.ZodType>();
const errorBodies = new Map<ErrorCode, z.ZodType>();

/** The error object `{code, message, ...details}` of one code (the same object for each call). */
export function errorObjectSchema(code: ErrorCode): z.ZodType {
  const known = errorObjects.get(code);
  if (known !== undefined) return known;
  const spec: ErrorSpec = errorCatalog[code];
  const replayed = spec.replayable === true ? { replayed: z.literal(true).optional() } : {};
  const schema = z.object({ code: z.literal(code), message: z.string(), ...spec.details, ...replayed });
  errorObjects.set(code, schema);
  return schema;
}

/** The body `{error: {code, message, ...details}}` of one code (the same object for each call). */
export function errorBodySchema(code: ErrorCode): z.ZodType {
  const known = errorBodies.get(code);
  if (known !== undefined) return known;
  const schema = z.object({ error: errorObjectSchema(code) });
  errorBodies.set(code, schema);
  return schema;
}

/** A successful answer with its JSON body. */
export const answer = (description: string, schema: z.ZodType): ResponseSpec => ({ description, schema });

/**
 * The refusals a route gives, grouped by status. A code may come with words of the route's own
 * (`['invalid_request', 'a URL that is not https']`) instead of the catalog's.
 */
export function refusals(...codes: (ErrorCode | [ErrorCode, string])[]): Responses {
  let responses: Responses = {};
  for (const entry of codes) {
    const [code, words] = typeof entry === 'string' ? [entry, errorCatalog[entry].description] : entry;
    responses = mergeResponses(responses, { [errorCatalog[code].status]: { description: `${code}: ${words}`, codes: [code] } });
  }
  return responses;
}

/** Both sets of answers; where both have a status, either may be answered (the first's words first). */
export function mergeResponses(first: Responses, second: Responses): Responses {
  const merged: Responses = { ...first };
  for (const [statusText, spec] of Object.entries(second)) {
    const status = Number(statusText);
    const earlier = merged[status];
    if (earlier === undefined) {
      merged[status] = spec;
      continue;
    }
    const codes = [...(earlier.codes ?? []), ...(spec.codes ?? []).filter((code) => !(earlier.codes ?? []).includes(code))];
    const added = (spec.codes ?? []).some((code) => !(earlier.codes ?? []).includes(code)) || spec.schema !== undefined;
    merged[status] = {
      description: added ? `${earlier.description}; or ${spec.description}` : earlier.description,
      schema:
        earlier.schema !== undefined && spec.schema !== undefined
          ? z.union([earlier.schema, spec.schema])
          : (earlier.schema ?? spec.schema),
      contentType: earlier.contentType ?? spec.contentType,
      codes: codes.length === 0 ? undefined : codes,
    };
  }
  return merged;
}

/** The schema of one status's body: its own schema, its error codes', or either. */
export function bodySchemaOf(spec: ResponseSpec): z.ZodType | undefined {
  const schemas = [...(spec.schema === undefined ? [] : [spec.schema]), ...(spec.codes ?? []).map(errorBodySchema)];
  if (schemas.length <= 1) return schemas[0];
  return z.union(schemas as [z.ZodType, z.ZodType, ...z.ZodType[]]);
}
