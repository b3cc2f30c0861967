import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AccountNotFound,
  EntryNotFound,
  InsufficientCredits,
  SpendLimitExceeded,
  TallyError,
  errorClasses,
  errorFromAnswer,
} from '../../client/src/errors.js';
import { errorCatalog } from '../../src/http/responses.js';
import { backoffMilliseconds, defaultRetryOptions, retryAfterSeconds } from '../../client/src/transport.js';

/**
 * Issue 13, the client's pure parts: Retry-After is read in both of its forms (and nonsense is
 * ignored), the backoff doubles and stays within its bounds whatever the jitter draws, and an
 * answer becomes the typed error of its code, or a plain TallyError when the code or the body
 * is unknown; every code of the server's catalog has its class.
 */
describe('the client transport', () => {
  it('reads Retry-After as seconds or as an HTTP date, and ignores what it cannot read', () => {
    assert.equal(retryAfterSeconds('5'), 5);
    assert.equal(retryAfterSeconds('0'), 0);
    const now = Date.parse('2030-01-01T00:00:00Z');
    assert.equal(retryAfterSeconds('Tue, 01 Jan 2030 00:00:30 GMT', now), 30);
    assert.equal(retryAfterSeconds('Mon, 31 Dec 2029 23:59:00 GMT', now), 0, 'a date in the past means now');
    assert.equal(retryAfterSeconds(null), undefined);
    assert.equal(retryAfterSeconds('soon'), undefined);
  });

  it('backs off exponentially, within its bounds, for any jitter', () => {
    const options = { ...defaultRetryOptions, delayMillisecondsBase: 100, delayMillisecondsMax: 1000 };
    for (const draw of [0, 0.5, 1]) {
      const waits = [1, 2, 3, 4, 5, 6].map((retry) => backoffMilliseconds(retry, options, () => draw));
      waits.forEach((wait, index) => {
        const exponential = Math.min(1000, 100 * 2 ** index);
        assert.ok(
          wait >= exponential / 2 && wait <= exponential,
          `retry ${index + 1} waits ${wait} ms, within [${exponential / 2}, ${exponential}]`,
        );
      });
      assert.ok(waits.every((wait) => wait <= 1000));
    }
  });

  it("turns an answer into its code's typed error, and anything else into a TallyError", () => {
    const refused = errorFromAnswer(402, {
      error: { code: 'insufficient_credits', message: 'not enough credits available', available: 7 },
    });
    assert.ok(refused instanceof InsufficientCredits);
    assert.equal(refused.available, 7);
    assert.equal(refused.status, 402);
    assert.equal(refused.name, 'InsufficientCredits');
    assert.ok(errorFromAnswer(404, { error: { code: 'account_not_found', message: 'no account' } }) instanceof AccountNotFound);
    const newer = errorFromAnswer(418, { error: { code: 'teapot', message: 'a code from a newer Tally' } });
    assert.equal(newer.constructor, TallyError);
    assert.equal(newer.code, 'teapot');
    const gateway = errorFromAnswer(502, '<html>Bad Gateway</html>');
    assert.equal(gateway.code, 'http_502');
    assert.match(gateway.message, /Bad Gateway/);
  });

  it("has a typed error for every code of Tally's error catalog, and no other", () => {
    assert.deepEqual(Object.keys(errorClasses).sort(), Object.keys(errorCatalog).sort());
    assert.ok(errorFromAnswer(404, { error: { code: 'entry_not_found', message: 'no entry' } }) instanceof EntryNotFound);
    const limited = errorFromAnswer(402, {
      error: {
        code: 'spend_limit_exceeded',
        message: 'past the day',
        window: 'day',
        limit: 50,
        spent: 40,
        resets_at: '2030-01-02T00:00:00.000Z',
      },
    });
    assert.ok(limited instanceof SpendLimitExceeded);
    assert.deepEqual(
      { window: limited.window, limit: limited.limit, spent: limited.spent, resetsAt: limited.resetsAt },
      { window: 'day', limit: 50, spent: 40, resetsAt: '2030-01-02T00:00:00.000Z' },
    );
  });
});
