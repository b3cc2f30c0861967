import type { components } from './openapi-types.js';

/**
 * Tally's refusals as typed errors: every answer `{error: {code, message, ...details}}` becomes
 * a TallyError of the code's own class, carrying the error object and the HTTP status, with its
 * details as typed fields (`InsufficientCredits.available`). A code this client does not know
 * yet (a newer Tally) is a plain TallyError.
 */
type Schemas = components['schemas'];
type ErrorObjectOf<Name extends keyof Schemas> = Schemas[Name] extends { error: infer Object } ? Object : never;

/** The error object of any refusal: its code, its message and the code's details. */
export interface TallyErrorObject {
  code: string;
  message: string;
  /** True when the answer repeats an idempotency key's first (refused) outcome. */
  replayed?: boolean;
  [detail: string]: unknown;
}

export class TallyError<ErrorObject extends TallyErrorObject = TallyErrorObject> extends Error {
  readonly status: number;
  readonly code: ErrorObject['code'];
  readonly error: ErrorObject;

  constructor(status: number, error: ErrorObject, options?: { cause?: unknown }) {
    super(`${status} ${error.code}: ${error.message}`, options);
    this.name = new.target.name;
    this.status = status;
    this.code = error.code;
    this.error = error;
  }

  /** True when Tally answered an idempotency key's first outcome again (the same refusal). */
  get replayed(): boolean {
    return this.error.replayed === true;
  }
}

/** No answer came: the network failed or every attempt timed out, after the retries allowed. */
export class TallyConnectionError extends Error {
  /** The idempotency key the attempts carried, to try again later with the same key. */
  readonly idempotencyKey: string | undefined;
  readonly attempts: number;

  constructor(message: string, attempts: number, idempotencyKey: string | undefined, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TallyConnectionError';
    this.attempts = attempts;
    this.idempotencyKey = idempotencyKey;
  }
}

export class InvalidRequest extends TallyError<ErrorObjectOf<'InvalidRequestError'>> {
  /** The field that is missing or wrong (`amount`, `events.3.idempotency_key`, `body`). */
  get field(): string {
    return this.error.field;
  }
}
export class CaptureExceedsHold extends TallyError<ErrorObjectOf<'CaptureExceedsHoldError'>> {
  get held(): number {
    return this.error.held;
  }
}
export class AdjustmentExceedsLimit extends TallyError<ErrorObjectOf<'AdjustmentExceedsLimitError'>> {
  get limit(): number {
    return this.error.limit;
  }
}
export class GrantExceedsLimit extends TallyError<ErrorObjectOf<'GrantExceedsLimitError'>> {
  get limit(): number {
    return this.error.limit;
  }
}
export class BalanceLimitExceeded extends TallyError<ErrorObjectOf<'BalanceLimitExceededError'>> {
  get limit(): number {
    return this.error.limit;
  }
}
export class InvalidSignature extends TallyError<ErrorObjectOf<'InvalidSignatureError'>> {}
export class Unauthorized extends TallyError<ErrorObjectOf<'UnauthorizedError'>> {}
export class InsufficientCredits extends TallyError<ErrorObjectOf<'InsufficientCreditsError'>> {
  /** The credits that were available when the spend was refused. */
  get available(): number {
    return this.error.available;
  }
}
export class SpendLimitExceeded extends TallyError<ErrorObjectOf<'SpendLimitExceededError'>> {
  get window(): 'day' | 'month' {
    return this.error.window;
  }
  get limit(): number {
    return this.error.limit;
  }
  get spent(): number {
    return this.error.spent;
  }
  get resetsAt(): string {
    return this.error.resets_at;
  }
}
export class Forbidden extends TallyError<ErrorObjectOf<'ForbiddenError'>> {}
export class TrialNotEligible extends TallyError<ErrorObjectOf<'TrialNotEligibleError'>> {
  get reason(): ErrorObjectOf<'TrialNotEligibleError'>['reason'] {
    return this.error.reason;
  }
}
export class MeterNotEntitled extends TallyError<ErrorObjectOf<'MeterNotEntitledError'>> {
  /** The meter the account's plan does not include. */
  get meter(): string {
    return this.error.meter;
  }
  /** The account's plan (null: a subscription on a price outside the catalog). */
  get planId(): string | null {
    return this.error.plan_id;
  }
}
export class AccountNotFound extends TallyError<ErrorObjectOf<'AccountNotFoundError'>> {}
export class HoldNotFound extends TallyError<ErrorObjectOf<'HoldNotFoundError'>> {}
export class PlanNotFound extends TallyError<ErrorObjectOf<'PlanNotFoundError'>> {}
export class PackNotFound extends TallyError<ErrorObjectOf<'PackNotFoundError'>> {}
export class EventNotFound extends TallyError<ErrorObjectOf<'EventNotFoundError'>> {}
export class EntryNotFound extends TallyError<ErrorObjectOf<'EntryNotFoundError'>> {}
export class EndpointNotFound extends TallyError<ErrorObjectOf<'EndpointNotFoundError'>> {}
export class RateCardNotFound extends TallyError<ErrorObjectOf<'RateCardNotFoundError'>> {}
export class IdempotencyConflict extends TallyError<ErrorObjectOf<'IdempotencyConflictError'>> {
  get idempotencyKey(): string {
    return this.error.idempotency_key;
  }
}
export class HoldNotPending extends TallyError<ErrorObjectOf<'HoldNotPendingError'>> {
  /** What became of the hold: captured, voided or expired. */
  get holdStatus(): 'captured' | 'voided' | 'expired' {
    return this.error.status;
  }
}
export class ReconciliationRunning extends TallyError<ErrorObjectOf<'ReconciliationRunningError'>> {}
export class NoPaymentMethod extends TallyError<ErrorObjectOf<'NoPaymentMethodError'>> {}
export class RequestTimeout extends TallyError<ErrorObjectOf<'RequestTimeoutError'>> {}
export class PayloadTooLarge extends TallyError<ErrorObjectOf<'PayloadTooLargeError'>> {}
export class UriTooLong extends TallyError<ErrorObjectOf<'UriTooLongError'>> {}
export class UnsupportedMediaType extends TallyError<ErrorObjectOf<'UnsupportedMediaTypeError'>> {}
export class RateLimited extends TallyError<ErrorObjectOf<'RateLimitedError'>> {
  get retryAfterSeconds(): number {
    return this.error.retry_after_seconds;
  }
}
export class InternalError extends TallyError<ErrorObjectOf<'InternalErrorError'>> {}
export class StripeError extends TallyError<ErrorObjectOf<'StripeErrorError'>> {}
export class StripeUnavailable extends TallyError<ErrorObjectOf<'StripeUnavailableError'>> {}
export class StripeNotConfigured extends TallyError<ErrorObjectOf<'StripeNotConfiguredError'>> {}
export class DatabaseUnavailable extends TallyError<ErrorObjectOf<'DatabaseUnavailableError'>> {}
export class DatabaseBusy extends TallyError<ErrorObjectOf<'DatabaseBusyError'>> {}
export class UnknownMeter extends TallyError<ErrorObjectOf<'UnknownMeterError'>> {
  get meter(): string {
    return this.error.meter;
  }
}

type AnyErrorClass = new (status: number, error: never, options?: { cause?: unknown }) => TallyError;

/** One class per code of Tally's error catalog. */
export const errorClasses: Record<string, AnyErrorClass> = {
  invalid_request: InvalidRequest,
  capture_exceeds_hold: CaptureExceedsHold,
  adjustment_exceeds_limit: AdjustmentExceedsLimit,
  grant_exceeds_limit: GrantExceedsLimit,
  balance_limit_exceeded: BalanceLimitExceeded,
  unknown_meter: UnknownMeter,
  invalid_signature: InvalidSignature,
  unauthorized: Unauthorized,
  insufficient_credits: InsufficientCredits,
  spend_limit_exceeded: SpendLimitExceeded,
  forbidden: Forbidden,
  trial_not_eligible: TrialNotEligible,
  meter_not_entitled: MeterNotEntitled,
  account_not_found: AccountNotFound,
  hold_not_found: HoldNotFound,
  plan_not_found: PlanNotFound,
  pack_not_found: PackNotFound,
  event_not_found: EventNotFound,
  entry_not_found: EntryNotFound,
  endpoint_not_found: EndpointNotFound,
  rate_card_not_found: RateCardNotFound,
  idempotency_conflict: IdempotencyConflict,
  hold_not_pending: HoldNotPending,
  reconciliation_running: ReconciliationRunning,
  no_payment_method: NoPaymentMethod,
  request_timeout: RequestTimeout,
  payload_too_large: PayloadTooLarge,
  uri_too_long: UriTooLong,
  unsupported_media_type: UnsupportedMediaType,
  rate_limited: RateLimited,
  internal_error: InternalError,
  stripe_error: StripeError,
  stripe_unavailable: StripeUnavailable,
  stripe_not_configured: StripeNotConfigured,
  database_unavailable: DatabaseUnavailable,
  database_busy: DatabaseBusy,
};

/** The typed error for an answer's status and body; a body without Tally's error shape is described by its status. */
export function errorFromAnswer(status: number, body: unknown): TallyError {
  const error = (body as { error?: unknown } | null)?.error;
  if (typeof error === 'object' && error !== null && typeof (error as { code?: unknown }).code === 'string') {
    const object = error as TallyErrorObject;
    const errorClass = errorClasses[object.code] ?? TallyError;
    return new (errorClass as new (status: number, error: TallyErrorObject) => TallyError)(status, object);
  }
  return new TallyError(status, {
    code: `http_${status}`,
    message: typeof body === 'string' && body !== '' ? body.slice(0, 200) : `HTTP ${status} without a Tally error body`,
  });
}
