import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelaySeconds, mayRetry, retrying, type Backoff } from '../../src/timing/backoff.js';

const exact: Backoff = { delaySecondsFirst: 30, delaySecondsMax: 4 * 3600, attemptsMax: 14, jitterRatio: 0 };

describe('backoff', () => {
  it('doubles from the first delay with each failure in a row, up to the cap', () => {
    // Proves the formula the jobs had by hand: first × 2^(failures - 1), never above the cap.
    const delays = [1, 2, 3, 4, 5, 9, 10, 13].map((failures) => backoffDelaySeconds(exact, failures));
    assert.deepEqual(delays, [30, 60, 120, 240, 480, 7680, 14400, 14400]);
  });

  it('stays finite and capped however many failures were counted', () => {
    // Proves that a count far past the cap (a delivery retried for days) neither overflows to
    // Infinity nor turns a zero first delay into NaN.
    assert.equal(backoffDelaySeconds(exact, 5000), 14400);
    assert.equal(backoffDelaySeconds({ ...exact, delaySecondsFirst: 0 }, 5000), 0);
    assert.equal(backoffDelaySeconds(exact, 0), 30, 'no failure yet counts as the first');
  });

  it('spreads each delay by the jitter ratio, within its bounds', () => {
    // Proves that jitter 0.5 gives 0.5 to 1.5 times the delay, the spread racing transactions use.
    const jittered: Backoff = { delaySecondsFirst: 0.002, delaySecondsMax: 0.1, attemptsMax: 8, jitterRatio: 0.5 };
    assert.equal(
      backoffDelaySeconds(jittered, 1, () => 0),
      0.001,
    );
    assert.equal(
      backoffDelaySeconds(jittered, 1, () => 0.5),
      0.002,
    );
    assert.equal(
      backoffDelaySeconds(jittered, 1, () => 1),
      0.003,
    );
    assert.equal(
      backoffDelaySeconds(jittered, 20, () => 1),
      0.15000000000000002,
      'the cap, spread',
    );
  });

  it('allows retries until the attempts are used up', () => {
    assert.equal(mayRetry(exact, 13), true);
    assert.equal(mayRetry(exact, 14), false);
    assert.equal(mayRetry({ ...exact, attemptsMax: Number.POSITIVE_INFINITY }, 1e9), true);
  });
});

describe('retrying', () => {
  const quick: Backoff = { delaySecondsFirst: 0.001, delaySecondsMax: 0.002, attemptsMax: 4, jitterRatio: 0.5 };

  it('tries again after a retryable failure and answers the first success', async () => {
    let calls = 0;
    const value = await retrying(
      async () => {
        calls += 1;
        if (calls < 3) throw new Error(`failure ${calls}`);
        return 'done';
      },
      quick,
      () => true,
    );
    assert.equal(value, 'done');
    assert.equal(calls, 3);
  });

  it('gives up after attemptsMax attempts with the last error', async () => {
    let calls = 0;
    await assert.rejects(
      retrying(
        async () => {
          calls += 1;
          throw new Error(`failure ${calls}`);
        },
        quick,
        () => true,
      ),
      /failure 4/,
    );
    assert.equal(calls, 4, 'bounded: attemptsMax attempts in all');
  });

  it('throws at once an error the caller does not retry, and tells it the failures so far', async () => {
    const seen: number[] = [];
    let calls = 0;
    await assert.rejects(
      retrying(
        async () => {
          calls += 1;
          throw new Error(calls === 1 ? 'retryable' : 'final');
        },
        quick,
        (error, failures) => {
          seen.push(failures);
          return (error as Error).message === 'retryable';
        },
      ),
      /final/,
    );
    assert.equal(calls, 2);
    assert.deepEqual(seen, [1, 2]);
  });
});
