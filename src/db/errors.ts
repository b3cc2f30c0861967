import { TallyError, InvariantError } from '../errors.js';

/**
 * PostgreSQL errors, by SQLSTATE, turned into the product's errors. Nothing here reads
 * message text: the SQL functions raise custom SQLSTATEs with the detail in `detail`.
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

/** Serialization failures, deadlocks, and two requests racing to insert one new request key. */
export function isRetryable(error: unknown): boolean {
  if (!isDatabaseError(error)) return false;
  if (error.code === '40001' || error.code === '40P01') return true;
  return error.code === '23505' && error.constraint === 'request_keys_pkey';
}

export function toDomainError(error: unknown): unknown {
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
    case 'TX001':
    case 'TE001':
      return new InvariantError(error.message, { cause: error });
    case '23514':
      // A CHECK constraint stopped a write that code should have refused first: a bug.
      return new InvariantError(`check constraint ${error.constraint ?? '?'} refused a write: ${error.message}`, { cause: error });
    default:
      return error;
  }
}
