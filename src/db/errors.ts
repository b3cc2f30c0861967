import pg from 'pg';
import { TallyError, InvariantError } from '../errors.js';

/**
 * PostgreSQL errors, by SQLSTATE, turned into the product's errors. Only node-postgres's own
 * connection errors, which have no code, are known by their text: the SQL functions raise
 * custom SQLSTATEs with the detail in `detail`.
 */
export interface DatabaseErrorLike {
  code?: string;
  detail?: string;
  constraint?: string;
  message: string;
}

export function isDatabaseError(error: unknown): error is DatabaseErrorLike {
  return error instanceof Error && typeof (error as { code?: unknown }).code === 'string';
}

/**
 * The database could not be reached: no connection could be had, or the one in use was lost.
 * Answered as 503 with Retry-After; every write is keyed, so the client's retry is safe.
 */
export class DatabaseUnavailableError extends TallyError<'database_unavailable'> {
  /**
   * Worth another quick try: nothing was done yet. By default, when the server refused (it
   * answered, or the port was closed); a pool that waited its full timeout is not.
   */
  readonly retryable: boolean;

  constructor(cause: unknown, retryable = isDatabaseError(cause)) {
    // The cause (with the server's own words) goes to the log, not to the client.
    super('database_unavailable', 503, 'the database is unavailable; retry shortly with the same idempotency key', {}, { cause });
    this.name = 'DatabaseUnavailableError';
    this.retryable = retryable;
  }
}

/**
 * The database is reachable but took too long: a statement ran past the statement timeout or
 * was cancelled (57014), or waited for a row lock past the lock timeout (55P03). The statement
 * failed and its transaction rolled back, so nothing was written; answered as 503 with
 * Retry-After, and the client's retry with the same key is safe.
 */
export class DatabaseBusyError extends TallyError<'database_busy'> {
  constructor(cause: DatabaseErrorLike) {
    // The cause (which statement, which lock) goes to the log, not to the client.
    super('database_busy', 503, 'the database is busy; retry shortly with the same idempotency key', {}, { cause });
    this.name = 'DatabaseBusyError';
  }
}

/** A lock wait ran past lock_timeout: worth one more try, as the holder may be about to finish. */
export function isLockTimeout(error: unknown): boolean {
  return isDatabaseError(error) && error.code === '55P03';
}

const socketErrorCodes = new Set(['ECONNRESET', 'EPIPE', 'ECONNREFUSED', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENOTFOUND']);
// node-postgres's own errors for a connection that is gone carry no code; their text is all there is.
const clientConnectionError = /^(Connection terminated|Client has encountered a connection error|Client was closed)/;

/**
 * The connection failed rather than the statement: connection-level SQLSTATEs (class 08, admin
 * or crash shutdown, too many clients), socket errors, and node-postgres's errors for a
 * connection that was closed under it (for example killed while idle in the pool).
 */
export function isConnectionLoss(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string') {
    return (
      code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300' || socketErrorCodes.has(code)
    );
  }
  return clientConnectionError.test(error.message);
}

/**
 * Serialization failures, deadlocks, two requests racing to insert one new request key, and
 * failures to get a connection (nothing was sent yet).
 */
export function isRetryable(error: unknown): boolean {
  if (error instanceof DatabaseUnavailableError) return error.retryable;
  if (!isDatabaseError(error)) return false;
  if (error.code === '40001' || error.code === '40P01') return true;
  return error.code === '23505' && error.constraint === 'request_keys_pkey';
}

export function toDomainError(error: unknown): unknown {
  if (isConnectionLoss(error)) return new DatabaseUnavailableError(error);
  if (!isDatabaseError(error)) return error;
  switch (error.code) {
    case 'TH404':
      return new TallyError('hold_not_found', 404, error.message);
    case 'TH409':
      return new TallyError('hold_not_pending', 409, error.message, { status: error.detail });
    case 'TH400':
      return new TallyError('capture_exceeds_hold', 400, error.message, { held: Number(error.detail) });
    case 'TA404':
      return new TallyError('account_not_found', 404, error.message);
    case '57014':
    case '55P03':
      return new DatabaseBusyError(error);
    case 'TR404':
      return new TallyError('rate_card_not_found', 404, error.message);
    case 'TR400':
    case 'TP400':
      return new TallyError('invalid_request', 400, `${error.detail ?? 'body'}: ${error.message}`, { field: error.detail ?? 'body' });
    case 'TP404':
      return new TallyError('unknown_meter', 400, error.message, { meter: error.detail });
    case 'TX001':
    case 'TE001':
      return new InvariantError(error.message, { cause: error });
    case '23514':
      // A balance would leave the safe integer range: the request asks for more than a balance
      // can hold (many large grants), a refusal rather than a bug; nothing was written.
      if (error.constraint === 'balances_safe') {
        return new TallyError('balance_limit_exceeded', 400, 'the balance would exceed 9007199254740991 credits, the most it can hold', {
          limit: Number.MAX_SAFE_INTEGER,
        });
      }
      // A CHECK constraint stopped a write that code should have refused first: a bug.
      return new InvariantError(`check constraint ${error.constraint ?? '?'} refused a write: ${error.message}`, { cause: error });
    default:
      return error;
  }
}

/**
 * For the error renderer: an error PostgreSQL answered that reached it without going through
 * Database (a read on the pool itself) becomes the same domain error; anything else is left as
 * it is (a framework error may carry a code of its own that only looks like a SQLSTATE).
 */
export function domainErrorOf(error: unknown): unknown {
  return error instanceof pg.DatabaseError ? toDomainError(error) : error;
}
