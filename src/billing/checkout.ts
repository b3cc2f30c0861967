import { payloadHash } from '../ledger/payload-hash.js';
import type Stripe from 'stripe';
import { z } from 'zod';
import type { Database } from '../db/database.js';
import { TallyError, accountNotFound, invalidRequest } from '../errors.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { accountMetadataKey, packMetadataKey } from '../stripe/shapes.js';
import type { Catalog } from './catalog.js';
import { signClientReference } from './client-reference.js';
import type { ClaimHasher } from './claim-hasher.js';

/**
 * Checkout: a Stripe Checkout Session for a plan (with its trial when asked) or a credit pack.
 * Every session names the account in metadata Tally sets (and a signed client reference), so
 * the webhooks that follow find it even before a Stripe customer is linked.
 */
const loopbackHosts = new Set(['localhost', '127.0.0.1', '[::1]']);

/**
 * Where Stripe may send the buyer back: https, or http to this machine (development). Anything
 * else (`javascript:`, `data:`, `file:`, plain http elsewhere) would be forwarded to Stripe and
 * shown to the buyer as a link.
 */
export function returnUrlProblem(value: string, allowedHosts: string[]): string | undefined {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return 'not a URL';
  }
  const loopback = loopbackHosts.has(url.hostname) || /^127(\.\d{1,3}){3}$/.test(url.hostname);
  if (url.protocol !== 'https:' && !(url.protocol === 'http:' && loopback)) return 'must be https (http only for this machine)';
  if (allowedHosts.length > 0 && !allowedHosts.includes(url.hostname)) return `host ${url.hostname} is not in TALLY_CHECKOUT_URL_HOSTS`;
  return undefined;
}

export const checkoutInputSchema = z
  .strictObject({
    plan_id: z.string().min(1).max(64).optional(),
    interval: z.enum(['month', 'year']).optional(),
    trial: z.boolean().optional(),
    pack_id: z.string().min(1).max(64).optional(),
    success_url: z.url().max(2048),
    cancel_url: z.url().max(2048),
  })
  .refine((input) => (input.plan_id === undefined) !== (input.pack_id === undefined), {
    message: 'give plan_id or pack_id',
    path: ['plan_id'],
  })
  .refine((input) => input.plan_id === undefined || input.interval !== undefined, { message: 'required with plan_id', path: ['interval'] })
  .refine((input) => input.pack_id === undefined || (input.interval === undefined && input.trial === undefined), {
    message: 'interval and trial go with plan_id',
    path: ['pack_id'],
  });
export type CheckoutInput = z.infer<typeof checkoutInputSchema>;

export interface TrialGate {
  /** Answers the reason a trial would be refused, or undefined when eligible. */
  refusal(accountId: string): Promise<string | undefined>;
}

export interface CheckoutDependencies {
  db: Database;
  catalog: Catalog;
  gateway: StripeGateway | undefined;
  trials: TrialGate;
  hasher: ClaimHasher;
  /** TALLY_CHECKOUT_URL_HOSTS: the only hosts success_url and cancel_url may name (empty: any). */
  checkoutUrlHosts?: string[] | undefined;
}

export async function createCheckout(
  dependencies: CheckoutDependencies,
  accountId: string,
  input: CheckoutInput,
): Promise<{ session_id: string; url: string | null }> {
  for (const field of ['success_url', 'cancel_url'] as const) {
    const problem = returnUrlProblem(input[field], dependencies.checkoutUrlHosts ?? []);
    if (problem !== undefined) throw invalidRequest(field, problem);
  }
  // Stripe gets the URL as it was checked: the parser's reading (tabs and newlines dropped,
  // backslashes as slashes, the host lower-cased), never raw text another parser may read with
  // another host.
  const checked = { ...input, success_url: new URL(input.success_url).href, cancel_url: new URL(input.cancel_url).href };
  const { rows } = await dependencies.db.query<{ email: string | null; stripe_customer_id: string | null }>(
    'select email, stripe_customer_id from accounts where id = $1',
    [accountId],
  );
  const account = rows[0];
  if (account === undefined) throw accountNotFound(accountId);
  const params = await sessionParams(dependencies, accountId, checked);
  if (account.stripe_customer_id !== null) params.customer = account.stripe_customer_id;
  else if (account.email !== null) params.customer_email = account.email;
  if (dependencies.gateway === undefined) throw new StripeUnavailableError('Stripe is not configured (STRIPE_SECRET_KEY)');
  const session = await dependencies.gateway.createCheckoutSession(params, checkoutIdempotencyKey(accountId, checked, params));
  return { session_id: session.id, url: session.url };
}

/**
 * The idempotency key of a checkout, derived from what it is for: the account, the item, a hash
 * of the parameters, and the minute. A client that retries after a timeout gets the session it
 * already asked for; a checkout asked for later is a new one.
 */
export const checkoutKeyWindowSeconds = 60;

export function checkoutIdempotencyKey(
  accountId: string,
  input: CheckoutInput,
  params: Stripe.Checkout.SessionCreateParams,
  now = Date.now(),
): string {
  const window = Math.floor(now / 1000 / checkoutKeyWindowSeconds);
  return `checkout:${accountId}:${input.plan_id ?? input.pack_id}:${payloadHash(params).slice(0, 16)}:${window}`;
}

async function sessionParams(
  dependencies: CheckoutDependencies,
  accountId: string,
  input: CheckoutInput,
): Promise<Stripe.Checkout.SessionCreateParams> {
  // The metadata attributes the session; the signed reference is there for the same reason a
  // Payment Link carries one, and a bare account id would teach integrators the wrong habit.
  const common = {
    client_reference_id: signClientReference(dependencies.hasher, accountId),
    success_url: input.success_url,
    cancel_url: input.cancel_url,
  };
  if (input.pack_id !== undefined) {
    const pack = dependencies.catalog.credit_packs.find((candidate) => candidate.id === input.pack_id);
    if (pack === undefined) throw new TallyError('plan_not_found', 404, `no credit pack ${input.pack_id}`);
    const metadata = { [accountMetadataKey]: accountId, [packMetadataKey]: pack.id };
    return { ...common, mode: 'payment', line_items: [{ price: pack.price, quantity: 1 }], metadata, payment_intent_data: { metadata } };
  }
  const plan = dependencies.catalog.plans.find((candidate) => candidate.id === input.plan_id);
  const price = input.interval === undefined ? undefined : plan?.prices[input.interval];
  if (plan === undefined || price === undefined)
    throw new TallyError('plan_not_found', 404, `no plan ${input.plan_id} billed by the ${input.interval}`);
  const metadata = { [accountMetadataKey]: accountId };
  const subscriptionData: Stripe.Checkout.SessionCreateParams.SubscriptionData = { metadata };
  if (input.trial === true) {
    if (plan.trial === undefined)
      throw new TallyError('trial_not_eligible', 403, `plan ${plan.id} has no trial`, { reason: 'plan_has_no_trial' });
    const refusal = await dependencies.trials.refusal(accountId);
    if (refusal !== undefined)
      throw new TallyError('trial_not_eligible', 403, `no trial for account ${accountId}: ${refusal}`, { reason: refusal });
    subscriptionData.trial_period_days = plan.trial.days;
    // A trial is claimed by its card's fingerprint; Link and other methods would escape that.
    // Under endive `payment_method_types` is gone (a 400): `allowed_payment_method_types` it is.
    return {
      ...common,
      mode: 'subscription',
      line_items: [{ price, quantity: 1 }],
      metadata,
      subscription_data: subscriptionData,
      allowed_payment_method_types: ['card'],
    };
  }
  return { ...common, mode: 'subscription', line_items: [{ price, quantity: 1 }], metadata, subscription_data: subscriptionData };
}
