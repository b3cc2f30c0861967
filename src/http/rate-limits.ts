import rateLimit, { normalizeIP } from '@fastify/rate-limit';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { TallyError } from '../errors.js';

/**
 * Rate limits, counted in this process's memory (@fastify/rate-limit's local store): they guard
 * the process's own time, not money, so they need no shared state. Failed keys and bad webhook
 * signatures are counted per client address, and only failures count, so a working app behind
 * the same address is never slowed by someone guessing keys beside it; checkout sessions are
 * counted per account, because each costs a call to Stripe.
 */
export interface RateLimitSettings {
  /** Requests with a missing or wrong key, per client address and minute, before 429. */
  authFailuresPerMinuteMax: number;
  /** Webhook deliveries with a bad signature, per client address and minute, before 429. */
  signatureFailuresPerMinuteMax: number;
  /** Checkout sessions asked for, per account and minute, before 429. */
  checkoutsPerAccountPerMinuteMax: number;
}

export const defaultRateLimits: RateLimitSettings = {
  authFailuresPerMinuteMax: 30,
  signatureFailuresPerMinuteMax: 30,
  checkoutsPerAccountPerMinuteMax: 20,
};

const windowMilliseconds = 60_000;

export const rateLimited = (retryAfterSeconds: number, what: string): TallyError =>
  new TallyError('rate_limited', 429, `too many ${what}; retry after ${retryAfterSeconds} seconds`, {
    retry_after_seconds: retryAfterSeconds,
  });

/** One counter: `count` adds a request and refuses it (429) past the limit. */
export interface Limiter {
  count(request: FastifyRequest): Promise<void>;
}

export interface Limiters {
  authFailures: Limiter;
  signatureFailures: Limiter;
  checkouts: Limiter;
}

export async function registerRateLimits(app: FastifyInstance, settings: RateLimitSettings): Promise<Limiters> {
  // global: false: no route is limited unless a limiter below is called for it.
  await app.register(rateLimit, { global: false });
  const limiter = (name: string, max: number, key: (request: FastifyRequest) => string, what: string): Limiter => {
    const apply = app.createRateLimit({ max, timeWindow: windowMilliseconds, keyGenerator: (request) => `${name}:${key(request)}` });
    return {
      count: async (request) => {
        const result = await apply(request);
        if (!result.isAllowed && result.isExceeded) throw rateLimited(Math.max(1, result.ttlInSeconds), what);
      },
    };
  };
  const address = (request: FastifyRequest): string => normalizeIP(request.ip);
  const account = (request: FastifyRequest): string => (request.params as Record<string, string>).id ?? '';
  return {
    authFailures: limiter('auth', settings.authFailuresPerMinuteMax, address, 'requests with a wrong key from this address'),
    signatureFailures: limiter(
      'signature',
      settings.signatureFailuresPerMinuteMax,
      address,
      'webhooks with a bad signature from this address',
    ),
    checkouts: limiter('checkout', settings.checkoutsPerAccountPerMinuteMax, account, 'checkout sessions for this account'),
  };
}
