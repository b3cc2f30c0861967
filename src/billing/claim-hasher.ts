import { createHmac } from 'node:crypto';
import type { Database } from '../db/database.js';

/**
 * The keyed hash of trial claims (trials.ts), and the keys and digests derived from the same
 * secret for signed client references and erasure pseudonyms. It has a file of its own so that
 * checkout, client references and event effects can hash without importing the trial rules.
 */
export type ClaimKind = 'account' | 'email' | 'device' | 'card' | 'payment_method';

export class ClaimHasher {
  constructor(private readonly secret: string) {}

  hash(kind: ClaimKind, value: string): string {
    return createHmac('sha256', this.secret).update(`${kind}:${value}`).digest('hex');
  }

  /**
   * A key for another purpose (signed client references), derived from the same server secret so
   * that no new setting is needed; the purpose in the derivation keeps the two uses apart.
   */
  derivedKey(purpose: string): Buffer {
    return createHmac('sha256', this.secret).update(`derive:${purpose}`).digest();
  }

  /** A keyed digest under the same secret for another purpose (erasure pseudonyms); never equal to a claim's hash. */
  digest(purpose: string, value: string): string {
    return createHmac('sha256', this.secret).update(`purpose:${purpose}:${value}`).digest('hex');
  }
}

/** The hashing secret: TALLY_FINGERPRINT_SECRET, or the one generated in the database. */
export async function loadClaimHasher(db: Database, configured: string | undefined): Promise<ClaimHasher> {
  if (configured !== undefined) return new ClaimHasher(configured);
  const { rows } = await db.query<{ value: string }>(`select value from tally_secrets where name = 'fingerprint'`);
  if (rows[0] === undefined) throw new Error('no fingerprint secret in tally_secrets; run the migrations');
  return new ClaimHasher(rows[0].value);
}
