import type pg from 'pg';
import type { Alerts } from '../ports/alerts.js';
import type { Catalog } from './catalog.js';
import { verifyClientReference } from './client-reference.js';
import type { ClaimHasher } from './claim-hasher.js';

/**
 * What an event's effects work with: the client of the event's own transaction (effects and
 * the processed mark commit together), the catalog, the event, and what was fetched from the
 * Stripe API before the transaction began (no lock is ever held across a call to Stripe).
 */
export type StripeObject = Record<string, unknown>;

export interface StoredEvent {
  id: string;
  type: string;
  created: number;
  object: StripeObject;
  /** The event's `livemode`, when it says. */
  livemode?: boolean | undefined;
  /** How long ago Tally stored it: what waits for another event stops waiting after a while. */
  receivedSecondsAgo?: number | undefined;
}

/**
 * What the Stripe API says about where an object came from, asked when the event alone did not
 * attribute it: the metadata and client reference of the Checkout Session that created it.
 * Present means the API was asked, so an object none of this attributes is not Tally's.
 */
export interface Provenance {
  accountHint?: string | undefined;
  clientReference?: string | undefined;
}

export interface Prepared {
  /** The payment intent behind a charge, refund or dispute, when the event did not carry it. */
  paymentIntent?: string;
  /** The invoice a payment intent paid, when Tally had not linked them yet. */
  invoiceId?: string;
  /** Refunds of a charge, when a charge.refunded event did not list them. */
  refunds?: StripeObject[];
  /** Every line of an invoice whose event listed only the first ones (`lines.has_more`). */
  invoiceLines?: StripeObject[];
  /** The card fingerprint of a subscription's payment method. */
  cardFingerprint?: string;
  /** For an invoice with a $0 plan line: its subscription's trial end in seconds (null: no trial). */
  trialEnd?: number | null;
  /** A Checkout Session's line items, when its event did not carry them. */
  lineItems?: StripeObject[];
  /** Where a subscription or invoice came from, asked of the API when the event did not say. */
  provenance?: Provenance;
  /**
   * For a refund or dispute of a payment Tally has not recorded: whether the payment bought
   * credits for an account (so it is worth waiting for), or is none of Tally's business.
   */
  paymentOwner?: 'tally' | { foreign: string };
  /** Emails Stripe holds for a trial's buyer: typed into its Checkout, or its Link account's. */
  emails?: string[];
  /** Fingerprints of a trial's payment method other than a card's (`{type}:{fingerprint}`). */
  paymentMethodFingerprints?: string[];
}

export interface EffectContext {
  client: pg.PoolClient;
  catalog: Catalog;
  hasher: ClaimHasher;
  /** Where effects raise alerts, in their transaction (ops/ implements it; see ports/alerts.ts). */
  alerts: Alerts;
  event: StoredEvent;
  prepared: Prepared;
  now: Date | null;
}

export interface EffectResult {
  status: 'processed' | 'ignored';
  accountId?: string;
  /** Why an event was ignored, kept on the inbox row for operators. */
  reason?: string;
}

/**
 * The event is not Tally's to apply (a price outside the catalog, a customer never linked, a
 * payment Tally never granted for), or it is a payment that no rule attributes to an account.
 * It is marked `ignored` at once with the reason, never retried; `alert` is set for a payment
 * of Tally's prices that nobody can be credited for, which an operator should look at.
 */
export class IgnoredEvent extends Error {
  constructor(
    readonly reason: string,
    readonly alert: boolean = false,
  ) {
    super(reason);
    this.name = 'IgnoredEvent';
  }
}

/** The event cannot be applied yet (an unknown customer, a payment not yet seen): retry later. */
export class RetryLater extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RetryLater';
  }
}

export interface GrantRequest {
  accountId: string;
  source: 'subscription' | 'trial' | 'purchase' | 'rollover';
  credits: number;
  expiresAt: Date | null;
  key: string;
  reference: Record<string, unknown>;
  paymentId?: number | undefined;
  /**
   * Whether the grant adds to its payment's credits (a pack). A subscription invoice's payment
   * knows every credit it bought when it is recorded (a yearly one: all twelve months), so its
   * grants only link to it, for clawbacks to take from them first.
   */
  countsTowardsPayment?: boolean;
  entryKind?: 'grant' | 'restore';
}

/** Adds a grant under its natural key once; counts it towards the payment that bought it. */
export async function grantOnce(context: EffectContext, request: GrantRequest): Promise<{ created: boolean; grantId: number }> {
  const { rows } = await context.client.query<{ result: { created: boolean; grant: { id: string } } }>(
    // Without a test clock, expiry is decided by the database's clock, as in every ledger call
    // (never the process's: two clocks disagree, and a grant would be live by one, expired by the other).
    `select tally_add_grant($1, $2, $3, 0, $4, $5, $6, $7, 'stripe', null, coalesce($8::timestamptz, now())) as result`,
    [
      request.accountId,
      request.source,
      request.credits,
      request.expiresAt,
      request.key,
      request.entryKind ?? 'grant',
      { ...request.reference, event: context.event.id },
      context.now,
    ],
  );
  const result = rows[0]?.result;
  if (result === undefined) throw new Error(`tally_add_grant answered nothing for ${request.key}`);
  const grantId = Number(result.grant.id.replace('grant_', ''));
  if (result.created && request.paymentId !== undefined) {
    await context.client.query('update grants set payment_id = $1 where id = $2', [request.paymentId, grantId]);
    if (request.countsTowardsPayment !== false) {
      await context.client.query('update payments set credits = credits + $1 where id = $2', [request.credits, request.paymentId]);
    }
  }
  // A restore gives back credits that were clawed back: not a new grant to look at.
  if (result.created && request.entryKind !== 'restore') {
    await context.alerts.checkGrant(context.client, {
      grantId,
      accountId: request.accountId,
      amount: request.credits,
      source: request.source,
    });
  }
  return { created: result.created, grantId };
}

export async function lockAccount(context: EffectContext, accountId: string): Promise<void> {
  await context.client.query('select tally_lock_account($1, $2)', [accountId, context.now]);
}

export interface AttributionHints {
  /** The account named in metadata Tally itself set (session, subscription, invoice snapshot, payment intent). */
  accountHint?: string | undefined;
  customerId?: string | undefined;
  subscriptionId?: string | undefined;
  /** A Checkout Session's client_reference_id: trusted only when Tally signed it. */
  clientReference?: string | undefined;
  /** The event holds all there is to know (a Checkout Session): no need to ask the API. */
  complete?: boolean;
  /** A payment of Tally's prices: unattributed, it raises an alert. */
  payment?: boolean;
}

async function accountExists(context: EffectContext, accountId: string | undefined): Promise<string | undefined> {
  if (accountId === undefined) return undefined;
  const { rows } = await context.client.query<{ id: string }>('select id from accounts where id = $1', [accountId]);
  return rows[0]?.id;
}

/**
 * The account an event belongs to, by SPEC's attribution rules, in order: metadata Tally set;
 * the Stripe customer already linked; the subscription already mirrored (itself attributed by
 * these rules); a client reference Tally signed; then what the API said about the object's
 * Checkout Session. A bare account id in client_reference_id is never trusted: a buyer types it.
 * Metadata and signed references may link the customer to an account that has none; a customer
 * already linked is never moved. Unattributed: `IgnoredEvent` once every source was consulted,
 * `RetryLater` while the API could still tell (it was not reachable or not configured).
 */
export async function resolveAccount(context: EffectContext, hints: AttributionHints): Promise<string> {
  const byMetadata = await accountExists(context, hints.accountHint);
  if (byMetadata !== undefined) return linked(context, byMetadata, hints.customerId);
  if (hints.customerId !== undefined) {
    const { rows } = await context.client.query<{ id: string }>('select id from accounts where stripe_customer_id = $1', [
      hints.customerId,
    ]);
    if (rows[0] !== undefined) return rows[0].id;
  }
  if (hints.subscriptionId !== undefined) {
    const { rows } = await context.client.query<{ account_id: string }>('select account_id from subscriptions where id = $1', [
      hints.subscriptionId,
    ]);
    if (rows[0] !== undefined) return rows[0].account_id;
  }
  const byReference = await accountExists(context, verifyClientReference(context.hasher, hints.clientReference));
  if (byReference !== undefined) return linked(context, byReference, hints.customerId);
  const provenance = context.prepared.provenance;
  if (provenance !== undefined) {
    const byProvenance =
      (await accountExists(context, provenance.accountHint)) ??
      (await accountExists(context, verifyClientReference(context.hasher, provenance.clientReference)));
    if (byProvenance !== undefined) return linked(context, byProvenance, hints.customerId);
  }
  const what = `customer ${hints.customerId ?? '?'}, subscription ${hints.subscriptionId ?? '?'}`;
  if (hints.complete === true || provenance !== undefined) {
    throw new IgnoredEvent(
      hints.payment === true
        ? `unattributed: no Tally metadata, linked customer or signed client reference names an account (${what})`
        : `not Tally's: no Tally metadata, linked customer or signed client reference (${what})`,
      hints.payment === true,
    );
  }
  throw new RetryLater(`no account known for ${what} yet, and the Stripe API was not asked`);
}

async function linked(context: EffectContext, accountId: string, customerId: string | undefined): Promise<string> {
  if (customerId !== undefined) await linkCustomer(context, accountId, customerId);
  return accountId;
}

/** Links a Stripe customer to an account that has none; a customer is never moved between accounts. */
export async function linkCustomer(context: EffectContext, accountId: string, customerId: string): Promise<void> {
  await context.client.query(
    `update accounts set stripe_customer_id = $2, updated_at = now()
     where id = $1 and stripe_customer_id is null
       and not exists (select 1 from accounts where stripe_customer_id = $2)`,
    [accountId, customerId],
  );
}
