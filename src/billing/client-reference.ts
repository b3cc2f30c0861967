import { createHmac, timingSafeEqual } from 'node:crypto';
import type { ClaimHasher } from './claim-hasher.js';

/**
 * Signed client references. A Payment Link's or pricing table's `client_reference_id` is typed
 * by the buyer (a URL parameter, a page attribute), so a bare account id there proves nothing.
 * The app asks Tally for a reference of the signed-in account and puts it in the link; Tally
 * attributes a session to that account only when the signature is its own.
 *
 * Stripe keeps a client_reference_id only if it is letters, digits, `-` and `_`, at most 200
 * characters (anything else silently becomes null), so the reference is base64url throughout:
 * `t1_{account id in base64url}_{22 characters of HMAC-SHA256}`. An account id of 128 bytes
 * makes 3 + 171 + 1 + 22 = 197 characters. The MAC is a fixed length at the end, so an
 * underscore inside the encoded id cannot confuse the parsing. References do not expire; they
 * reveal the account id and nothing else. The key is derived from the fingerprint secret
 * (TALLY_FINGERPRINT_SECRET, or the one generated in the database): changing that secret
 * invalidates every reference handed out, as it does every trial claim.
 */
const prefix = 't1_';
const macLength = 22;
export const clientReferenceLengthMax = 200;

function mac(key: Buffer, accountId: string): string {
  return createHmac('sha256', key).update(`client-reference:${accountId}`).digest().subarray(0, 16).toString('base64url');
}

const keyOf = (hasher: ClaimHasher): Buffer => hasher.derivedKey('client-reference');

export function signClientReference(hasher: ClaimHasher, accountId: string): string {
  const reference = `${prefix}${Buffer.from(accountId, 'utf8').toString('base64url')}_${mac(keyOf(hasher), accountId)}`;
  if (reference.length > clientReferenceLengthMax)
    throw new Error(`a client reference for an account id of ${accountId.length} characters is too long for Stripe`);
  return reference;
}

/** The account a reference was signed for, or undefined for anything Tally did not sign. */
export function verifyClientReference(hasher: ClaimHasher, reference: string | undefined): string | undefined {
  if (reference === undefined || !reference.startsWith(prefix) || reference.length > clientReferenceLengthMax) return undefined;
  const body = reference.slice(prefix.length);
  if (body.length < macLength + 2 || body[body.length - macLength - 1] !== '_') return undefined;
  const encoded = body.slice(0, body.length - macLength - 1);
  const given = Buffer.from(body.slice(body.length - macLength), 'utf8');
  if (!/^[A-Za-z0-9_-]+$/.test(encoded)) return undefined;
  const accountId = Buffer.from(encoded, 'base64url').toString('utf8');
  // Re-encoding must give back exactly what was sent: no alternative spellings of one id.
  if (Buffer.from(accountId, 'utf8').toString('base64url') !== encoded) return undefined;
  const expected = Buffer.from(mac(keyOf(hasher), accountId), 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected) ? accountId : undefined;
}
