import { TallyConnectionError } from './errors.js';

/**
 * The retrying transport under every call. A call is retried, with the same request (and so the
 * same idempotency key in its body), after a timeout, a network error or `503
 * database_unavailable` or `database_busy`, with exponential backoff bounded by
 * `delayMillisecondsMax` and never shorter than the answer's Retry-After. A 4xx is never
 * retried: it is Tally's final word.
 */
export interface RetryOptions {
  /** Attempts in all, the first included (1 turns retries off). */
  attemptsMax: number;
  /** The first retry waits about this long; each next one twice as long. */
  delayMillisecondsBase: number;
  /** No wait is longer, except what Retry-After asks for. */
  delayMillisecondsMax: number;
  /** A Retry-After longer than this is not waited for: the answer is given as it is. */
  retryAfterSecondsMax: number;
}

export const defaultRetryOptions: RetryOptions = {
  attemptsMax: 4,
  delayMillisecondsBase: 200,
  delayMillisecondsMax: 5_000,
  retryAfterSecondsMax: 30,
};

/**
 * How a call may be retried. `idempotent`: sending it twice does what sending it once does (a
 * keyed write, a PUT, a read): retried after a timeout, a network error, a 503 from Tally's
 * database or a gateway's 502/503/504. `once`: a second delivery would be refused (capturing or
 * voiding a hold, creating an endpoint): retried only when Tally surely did nothing (503
 * database_unavailable or database_busy, whose transaction rolled back, or the connection was
 * refused).
 */
export type RetryPolicy = 'idempotent' | 'once';

export type FetchFunction = (input: Request) => Promise<Response>;

export interface TransportOptions {
  fetch: FetchFunction;
  /** Each attempt's time limit. */
  timeoutMilliseconds: number;
  retry: RetryOptions;
  /** Waits between attempts (tests may shorten it). */
  sleep?: (milliseconds: number) => Promise<void>;
  /** Draws the jitter of each wait (0 to 1). */
  random?: () => number;
}

const defaultSleep = (milliseconds: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, milliseconds));

class AttemptTimeout extends Error {
  constructor(milliseconds: number) {
    super(`no answer within ${milliseconds} ms`);
    this.name = 'AttemptTimeout';
  }
}

/** Seconds from a Retry-After header (seconds or an HTTP date); undefined when absent or unreadable. */
export function retryAfterSeconds(header: string | null, now = Date.now()): number | undefined {
  if (header === null || header.trim() === '') return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, (date - now) / 1000);
}

/** The wait before retry number `retry` (1 for the first): exponential, bounded, half of it jittered. */
export function backoffMilliseconds(retry: number, options: RetryOptions, random: () => number): number {
  const exponential = Math.min(options.delayMillisecondsMax, options.delayMillisecondsBase * 2 ** (retry - 1));
  return exponential / 2 + (exponential / 2) * random();
}

/** Tally's database could not do the work, so nothing was done: unavailable, or busy past its timeouts. */
async function isDatabaseUnavailable(response: Response): Promise<boolean> {
  if (response.status !== 503) return false;
  try {
    const body = (await response.clone().json()) as { error?: { code?: unknown } };
    return body.error?.code === 'database_unavailable' || body.error?.code === 'database_busy';
  } catch {
    return false;
  }
}

/** A gateway's own failure (no Tally error body): the request may never have reached Tally. */
async function isGatewayFailure(response: Response): Promise<boolean> {
  if (![502, 503, 504].includes(response.status)) return false;
  try {
    const body = (await response.clone().json()) as { error?: { code?: unknown } };
    return typeof body.error?.code !== 'string';
  } catch {
    return true;
  }
}

function connectionRefused(error: unknown): boolean {
  const cause = (error as { cause?: { code?: unknown } } | undefined)?.cause;
  return cause?.code === 'ECONNREFUSED';
}

export class Transport {
  private readonly sleep: (milliseconds: number) => Promise<void>;
  private readonly random: () => number;

  constructor(private readonly options: TransportOptions) {
    this.sleep = options.sleep ?? defaultSleep;
    this.random = options.random ?? Math.random;
  }

  /** A fetch for openapi-fetch that sends the request with this policy's retries. */
  fetchFor(policy: RetryPolicy, idempotencyKey?: string): FetchFunction {
    return (request) => this.send(request, policy, idempotencyKey);
  }

  async send(request: Request, policy: RetryPolicy, idempotencyKey?: string): Promise<Response> {
    // The body is read once and sent again as it is by every attempt: the same key each time.
    const body = request.body === null ? undefined : await request.arrayBuffer();
    const { attemptsMax } = this.options.retry;
    for (let attempt = 1; ; attempt += 1) {
      let response: Response;
      try {
        response = await this.attempt(request, body);
      } catch (error) {
        if (request.signal?.aborted === true) throw error;
        const retryable = policy === 'idempotent' || connectionRefused(error);
        if (!retryable || attempt >= attemptsMax) {
          const what = error instanceof AttemptTimeout ? error.message : `the request failed (${(error as Error).message})`;
          throw new TallyConnectionError(
            `${request.method} ${new URL(request.url).pathname}: ${what} after ${attempt} attempt(s)`,
            attempt,
            idempotencyKey,
            { cause: error },
          );
        }
        await this.sleep(backoffMilliseconds(attempt, this.options.retry, this.random));
        continue;
      }
      const retryable = (await isDatabaseUnavailable(response)) || (policy === 'idempotent' && (await isGatewayFailure(response)));
      if (!retryable || attempt >= attemptsMax) return response;
      const asked = retryAfterSeconds(response.headers.get('retry-after'));
      if (asked !== undefined && asked > this.options.retry.retryAfterSecondsMax) return response;
      await response.body?.cancel();
      await this.sleep(Math.max(backoffMilliseconds(attempt, this.options.retry, this.random), (asked ?? 0) * 1000));
    }
  }

  /** One attempt, cut off after the time limit (or when the caller's signal aborts). */
  private async attempt(request: Request, body: ArrayBuffer | undefined): Promise<Response> {
    const controller = new AbortController();
    const timeout = new AttemptTimeout(this.options.timeoutMilliseconds);
    const timer = setTimeout(() => controller.abort(timeout), this.options.timeoutMilliseconds);
    const abort = () => controller.abort(request.signal.reason);
    request.signal?.addEventListener('abort', abort);
    try {
      const attempt = new Request(request.url, { method: request.method, headers: request.headers, body, signal: controller.signal });
      return await this.options.fetch(attempt);
    } catch (error) {
      if (controller.signal.reason === timeout) throw timeout;
      throw error;
    } finally {
      clearTimeout(timer);
      request.signal?.removeEventListener('abort', abort);
    }
  }
}
