/**
 * Every error code the product answers, with its HTTP status: the one list. A TallyError can
 * only carry a code from it, with its status; http/responses.ts describes each code for the
 * OpenAPI description and the client (a type check keeps both lists equal), and a test checks
 * that every code the SQL functions answer or raise is here.
 */
export const errorStatuses = {
  invalid_request: 400,
  capture_exceeds_hold: 400,
  adjustment_exceeds_limit: 400,
  grant_exceeds_limit: 400,
  balance_limit_exceeded: 400,
  unknown_meter: 400,
  invalid_signature: 400,
  unauthorized: 401,
  insufficient_credits: 402,
  spend_limit_exceeded: 402,
  forbidden: 403,
  trial_not_eligible: 403,
  meter_not_entitled: 403,
  account_not_found: 404,
  hold_not_found: 404,
  plan_not_found: 404,
  pack_not_found: 404,
  event_not_found: 404,
  entry_not_found: 404,
  endpoint_not_found: 404,
  rate_card_not_found: 404,
  idempotency_conflict: 409,
  hold_not_pending: 409,
  reconciliation_running: 409,
  no_payment_method: 409,
  request_timeout: 408,
  payload_too_large: 413,
  uri_too_long: 414,
  unsupported_media_type: 415,
  rate_limited: 429,
  internal_error: 500,
  stripe_error: 502,
  stripe_unavailable: 503,
  stripe_not_configured: 503,
  database_unavailable: 503,
  database_busy: 503,
} as const;

export type ErrorCode = keyof typeof errorStatuses;
export type ErrorStatus<Code extends ErrorCode> = (typeof errorStatuses)[Code];

export const isErrorCode = (code: unknown): code is ErrorCode => typeof code === 'string' && Object.hasOwn(errorStatuses, code);

/**
 * The one error type of the product: a stable `code` from the catalog above, the HTTP status it
 * is answered with, and details that the client may act on. Operating errors (insufficient
 * credits, an unknown account, bad input) are TallyErrors; anything else reaching the error
 * renderer is a bug.
 */
export class TallyError<Code extends ErrorCode = ErrorCode> extends Error {
  readonly code: Code;
  readonly status: ErrorStatus<Code>;
  readonly details: Record<string, unknown>;

  constructor(
    code: Code,
    status: ErrorStatus<Code>,
    message: string,
    details: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'TallyError';
    this.code = code;
    this.status = status;
    this.details = details;
  }

  toBody(): { error: Record<string, unknown> } {
    return { error: { code: this.code, message: this.message, ...this.details } };
  }
}

export const invalidRequest = (field: string, message: string): TallyError =>
  new TallyError('invalid_request', 400, `${field}: ${message}`, { field });

export const accountNotFound = (accountId: string): TallyError =>
  new TallyError('account_not_found', 404, `no account with id ${accountId}`);

/** A broken invariant: never a client's fault, always a bug to fix. */
export class InvariantError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(`invariant broken: ${message}`, options);
    this.name = 'InvariantError';
  }
}

export function assertInvariant(condition: unknown, message: string): asserts condition {
  if (!condition) throw new InvariantError(message);
}
