import { createHash, timingSafeEqual } from 'node:crypto';
import { TallyError } from '../errors.js';

/**
 * Bearer keys. The app key opens the app's calls; the admin key opens everything. Keys are
 * compared as SHA-256 digests in constant time.
 */
export type AccessLevel = 'none' | 'app' | 'admin';
export type Caller = 'app' | 'admin' | 'anonymous';

const digest = (value: string): Buffer => createHash('sha256').update(value).digest();

export class KeyChecker {
  private readonly appDigest: Buffer;
  private readonly adminDigest: Buffer;

  constructor(keys: { apiKey: string; adminKey: string }) {
    this.appDigest = digest(keys.apiKey);
    this.adminDigest = digest(keys.adminKey);
  }

  identify(authorization: string | undefined): Caller {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization ?? '');
    if (match?.[1] === undefined) return 'anonymous';
    const presented = digest(match[1]);
    if (timingSafeEqual(presented, this.adminDigest)) return 'admin';
    if (timingSafeEqual(presented, this.appDigest)) return 'app';
    return 'anonymous';
  }

  /** Throws 401 for a missing or wrong key, 403 for the app key on an admin call. */
  authorize(level: AccessLevel, authorization: string | undefined): Caller {
    const caller = this.identify(authorization);
    if (level === 'none') return caller;
    if (caller === 'anonymous') throw new TallyError('unauthorized', 401, 'missing or wrong bearer key');
    if (level === 'admin' && caller !== 'admin') throw new TallyError('forbidden', 403, 'this call needs the admin key');
    return caller;
  }
}
