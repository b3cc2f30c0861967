/**
 * The one error type of the product: a stable `code`, the HTTP status it is answered with, and
 * details that the client may act on. Operating errors (insufficient credits, an unknown
 * account, bad input) are TallyErrors; anything else reaching the error renderer is a bug.
 */
export class TallyError extends Error {
  readonly code: string;
  readonly status: number;
  readonly details: Record<string, unknown>;

  constructor(code: string, status: number, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
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
