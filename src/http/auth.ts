import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { TallyError } from '../errors.js';

/**
 * Bearer keys. The app key opens the app's calls; the admin key opens everything; the viewer
 * key (optional) opens the reads (GET) of the app and admin calls and nothing that writes, so
 * that support staff never hold a key that grants credits, and no read that answers personal
 * data (routes marked `personalData`; others mask emails and names for it). The metrics key
 * (optional) opens `/metrics` alone, for Prometheus. Keys are compared as SHA-256 digests in
 * constant time.
 */
export type AccessLevel = 'none' | 'app' | 'admin' | 'metrics';
export type Caller = 'app' | 'admin' | 'viewer' | 'metrics' | 'anonymous';

export interface Keys {
  apiKey: string;
  adminKey: string;
  viewerKey?: string | undefined;
  /** TALLY_METRICS_KEY: `/metrics` only. */
  metricsKey?: string | undefined;
}

/** What the key check needs to know of a route. */
export interface RouteAccess {
  access: AccessLevel;
  method: string;
  /** The route answers personal data: the viewer key is refused it. */
  personalData?: true | undefined;
}

/** Told of each request refused for a missing or wrong key; it may refuse harder (429). */
export type FailureLimiter = (request: FastifyRequest) => Promise<void>;

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

export class KeyChecker {
  private readonly appDigest: Buffer;
  private readonly adminDigest: Buffer;
  private readonly viewerDigest: Buffer | undefined;
  private readonly metricsDigest: Buffer | undefined;

  constructor(
    keys: Keys,
    private readonly limitFailure: FailureLimiter = async () => undefined,
  ) {
    this.appDigest = digest(keys.apiKey);
    this.adminDigest = digest(keys.adminKey);
    this.viewerDigest = keys.viewerKey === undefined ? undefined : digest(keys.viewerKey);
    this.metricsDigest = keys.metricsKey === undefined ? undefined : digest(keys.metricsKey);
  }

  identify(authorization: string | undefined): Caller {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (match?.[1] === undefined) return 'anonymous';
    const presented = digest(match[1]);
    if (timingSafeEqual(presented, this.adminDigest)) return 'admin';
    if (timingSafeEqual(presented, this.appDigest)) return 'app';
    if (this.viewerDigest !== undefined && timingSafeEqual(presented, this.viewerDigest)) return 'viewer';
    if (this.metricsDigest !== undefined && timingSafeEqual(presented, this.metricsDigest)) return 'metrics';
    return 'anonymous';
  }

  /**
   * Throws 401 for a missing or wrong key (429 once the address has failed too often); 403 for
   * the app key on an admin call, for the viewer key on anything but a read or on a read of
   * personal data, and for the metrics key on anything but `/metrics`.
   */
  async authorize(route: RouteAccess, request: FastifyRequest): Promise<Caller> {
    const caller = this.identify(request.headers.authorization);
    if (route.access === 'none') return caller;
    if (caller === 'anonymous') {
      await this.limitFailure(request);
      throw new TallyError('unauthorized', 401, 'missing or wrong bearer key');
    }
    if (caller === 'metrics') {
      if (route.access === 'metrics') return caller;
      throw new TallyError('forbidden', 403, 'the metrics key opens /metrics only');
    }
    if (caller === 'viewer') {
      if (route.method !== 'GET' && route.method !== 'HEAD')
        throw new TallyError('forbidden', 403, 'the viewer key is read-only; this call needs the app or admin key');
      if (route.personalData === true)
        throw new TallyError('forbidden', 403, 'the viewer key never reads personal data; this call needs the app or admin key');
      return caller;
    }
    if (route.access !== 'app' && caller !== 'admin') throw new TallyError('forbidden', 403, 'this call needs the admin key');
    return caller;
  }
}
