import { setTimeout as sleep } from 'node:timers/promises';

/**
 * Exponential backoff, the one formula for every retry in Tally: the wait after the first
 * failure, doubling with each failure in a row up to a cap, optionally spread by jitter, and a
 * bounded number of attempts. Jobs whose attempts are counted in the database (webhook events,
 * deliveries, alerts) ask it for the next wait; work retried in the process (a transaction that
 * lost a race) runs through `retrying`.
 */
export interface Backoff {
  /** The wait after the first failure, in seconds. */
  delaySecondsFirst: number;
  /** No wait is longer, in seconds. */
  delaySecondsMax: number;
  /**
   * Failures after which the work is given up (the caller fails it, and alerts). Infinity only
   * where something else bounds the retries (a retry window in time, a schedule's interval).
   */
  attemptsMax: number;
  /**
   * 0: exact waits. Otherwise each wait is multiplied by a random factor between 1 - jitterRatio
   * and 1 + jitterRatio, so that work that failed together does not retry together.
   */
  jitterRatio: number;
}

// 2^52 times any sane first delay is still a finite number; beyond it doubling only overflows.
const doublingCountMax = 52;

/** The wait in seconds after `failures` failures in a row (1 after the first). */
export function backoffDelaySeconds(backoff: Backoff, failures: number, random: () => number = Math.random): number {
  const doublings = Math.min(Math.max(failures - 1, 0), doublingCountMax);
  const delaySeconds = Math.min(backoff.delaySecondsFirst * 2 ** doublings, backoff.delaySecondsMax);
  if (backoff.jitterRatio === 0) return delaySeconds;
  return delaySeconds * (1 - backoff.jitterRatio + 2 * backoff.jitterRatio * random());
}

/** Whether work that failed `failures` times in a row may be tried again. */
export function mayRetry(backoff: Backoff, failures: number): boolean {
  return failures < backoff.attemptsMax;
}

/**
 * Runs `operation` until it succeeds; after a failure that `retryable` accepts, waits out the
 * backoff and tries again, at most `attemptsMax` attempts in all. The last error, or one that is
 * not retryable, is thrown as it was.
 */
export async function retrying<T>(
  operation: () => Promise<T>,
  backoff: Backoff,
  retryable: (error: unknown, failures: number) => boolean,
): Promise<T> {
  for (let failures = 0; ; ) {
    try {
      return await operation();
    } catch (error) {
      failures += 1;
      if (!mayRetry(backoff, failures) || !retryable(error, failures)) throw error;
      await sleep(backoffDelaySeconds(backoff, failures) * 1000);
    }
  }
}
