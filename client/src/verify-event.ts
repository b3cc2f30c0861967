import { Webhook } from 'standardwebhooks';
import type { components } from './openapi-types.js';

/**
 * Checks an event Tally POSTed to the app's endpoint (Standard Webhooks: `webhook-id`,
 * `webhook-timestamp`, `webhook-signature`) and answers it, typed. Pass the body exactly as it
 * arrived (the signature covers those bytes) and the endpoint's `whsec_` secret. A wrong
 * signature, a timestamp more than five minutes away or a missing header throws.
 */
/** An event as delivered: the event log's record, with `timestamp` (its creation time) as Standard Webhooks payloads carry. */
export type DeliveredEvent = components['schemas']['Event'] & { timestamp: string };

export type EventHeaders = Headers | Record<string, string | string[] | undefined>;

function headerRecord(headers: EventHeaders): Record<string, string> {
  const record: Record<string, string> = {};
  if (typeof (headers as Headers).forEach === 'function' && typeof (headers as Headers).get === 'function') {
    (headers as Headers).forEach((value, name) => {
      record[name.toLowerCase()] = value;
    });
    return record;
  }
  for (const [name, value] of Object.entries(headers as Record<string, string | string[] | undefined>)) {
    if (value !== undefined) record[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }
  return record;
}

export function verifyEvent(body: string | Uint8Array, headers: EventHeaders, secret: string): DeliveredEvent {
  const text = typeof body === 'string' ? body : new TextDecoder().decode(body);
  return new Webhook(secret).verify(text, headerRecord(headers)) as DeliveredEvent;
}
