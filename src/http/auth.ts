import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { TallyError } from '../errors.js';

/**
 * Bearer keys. The app key opens the app's calls; the admin key opens everything; the viewer
 * key (optional) opens every read (GET) of the app and admin calls and nothing that writes, so
 * that Prometheus and support staff never hold a key that grants credits. Keys are compared as
 * SHA-256 digests in constant time.
 */
export type AccessLevel = 'none' | 'app' | 'admin';
export type Caller = 'app' | 'admin' | 'viewer' | 'anonymous';

export interface Keys {
  apiKey: string;
  adminKey: string;
  viewerKey?: string | undefined;
}

/** Told of each request refused for a missing or wrong key; it may refuse harder (429). */
export type FailureLimiter = (request: FastifyRequest) => Promise<void>;

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

export class KeyChecker {
  private readonly appDigest: Buffer;
  private readonly adminDigest: Buffer;
  private readonly viewerDigest: Buffer | undefined;

  constructor(
    keys: Keys,
    private readonly limitFailure: FailureLimiter = async () => undefined,
  ) {
    this.appDigest = digest(keys.apiKey);
    this.adminDigest = digest(keys.adminKey);
    this.viewerDigest = keys.viewerKey === undefined ? undefined : digest(keys.viewerKey);
  }

  identify(authorization: string | undefined): Caller {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (match?.[1] === undefined) return 'anonymous';
    const presented = digest(match[1]);
    if (timingSafeEqual(presented, this.adminDigest)) return 'admin';
    if (timingSafeEqual(presented, this.appDigest)) return 'app';
    if (this.viewerDigest !== undefined && timingSafeEqual(presented, this.viewerDigest)) return 'viewer';
    return 'anonymous';
  }

  /**
   * Throws 401 for a missing or wrong key (429 once the address has failed too often), 403 for
   * the app key on an admin call and for the viewer key on anything but a read.
   */
  async authorize(level: AccessLevel, method: string, request: FastifyRequest): Promise<Caller> {
    const caller = this.identify(request.headers.authorization);
    if (level === 'none') return caller;
    if (caller === 'anonymous') {
      await this.limitFailure(request);
      throw new TallyError('unauthorized', 401, 'missing or wrong bearer key');
    }
    if (caller === 'viewer') {
      if (method === 'GET' || method === 'HEAD') return caller;
      throw new TallyError('forbidden', 403, 'the viewer key is read-only; this call needs the app or admin key');
    }
    if (level === 'admin' && caller !== 'admin') throw new TallyError('forbidden', 403, 'this call needs the admin key');
    return caller;
  }
}
