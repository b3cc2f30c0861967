import Stripe from 'stripe';
import { TallyError } from '../errors.js';

/**
 * Stripe's webhook signature, checked on the raw body with the official package against every
 * configured secret (several during a rotation). The SDK refuses timestamps older than the
 * tolerance; it accepts any in the future, so those are refused here too.
 */
export const signatureToleranceSeconds = 300;

export interface VerifiedEvent {
  id: string;
  type: string;
  api_version: string | null;
  created: number;
  data: { object: Record<string, unknown>; previous_attributes?: Record<string, unknown> };
}

const invalidSignature = (message: string): TallyError => new TallyError('invalid_signature', 400, message);

export function verifyWebhook(
  rawBody: Buffer,
  header: string | undefined,
  secrets: string[],
  nowSeconds = Math.floor(Date.now() / 1000),
): VerifiedEvent {
  if (header === undefined || header === '') throw invalidSignature('missing Stripe-Signature header');
  const timestamp = Number(/(?:^|,)t=(\d+)/.exec(header)?.[1]);
  if (!Number.isSafeInteger(timestamp)) throw invalidSignature('Stripe-Signature has no timestamp');
  if (timestamp > nowSeconds + signatureToleranceSeconds) throw invalidSignature('Stripe-Signature timestamp is in the future');
  for (const secret of secrets) {
    try {
      // receivedAt is in milliseconds.
      const event = Stripe.webhooks.constructEvent(
        rawBody,
        header,
        secret,
        signatureToleranceSeconds,
        undefined,
        nowSeconds * 1000,
      ) as unknown as VerifiedEvent;
      return checkShape(event);
    } catch (error) {
      // A mismatch against one secret is expected during a rotation: try the next one.
      if (!(error instanceof Stripe.errors.StripeSignatureVerificationError))
        throw invalidSignature(`unreadable event: ${(error as Error).message}`);
    }
  }
  throw invalidSignature('no configured webhook secret matches the signature, or the timestamp is too old');
}

function checkShape(event: VerifiedEvent): VerifiedEvent {
  if (typeof event.id !== 'string' || !event.id.startsWith('evt_')) throw invalidSignature('signed body is not a Stripe event (id)');
  if (typeof event.type !== 'string' || event.type === '') throw invalidSignature('signed body is not a Stripe event (type)');
  if (!Number.isSafeInteger(event.created)) throw invalidSignature('signed body is not a Stripe event (created)');
  if (typeof event.data?.object !== 'object' || event.data.object === null)
    throw invalidSignature('signed body is not a Stripe event (data.object)');
  return event;
}
