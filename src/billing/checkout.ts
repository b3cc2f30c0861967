import { payloadHash } from '../ledger/payload-hash.js';
import type Stripe from 'stripe';
import { z } from 'zod';
import type { Database } from '../db/database.js';
import { TallyError, accountNotFound } from '../errors.js';
import { StripeUnavailableError, type StripeGateway } from '../stripe/gateway.js';
import { accountMetadataKey, packMetadataKey } from '../stripe/shapes.js';
import type { Catalog } from './catalog.js';

/**
 * Checkout: a Stripe Checkout Session for a plan (with its trial when asked) or a credit pack.
 * Every session names the account (client_reference_id and metadata), so the webhooks that
 * follow find it even before a Stripe customer is linked.
 */
export const checkoutInputSchema = z
  .strictObject({
    plan_id: z.string().min(1).max(64).optional(),
    interval: z.enum(['month', 'year']).optional(),
    trial: z.boolean().optional(),
    pack_id: z.string().min(1).max(64).optional(),
    success_url: z.url(),
    cancel_url: z.url(),
  })
  .refine((input) => (input.plan_id === undefined) !== (input.pack_id === undefined), { message: 'give plan_id or pack_id', path: ['plan_id'] })
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

export async function createCheckout(
  dependencies: { db: Database; catalog: Catalog; gateway: StripeGateway | undefined; trials: TrialGate },
  accountId: string,
  input: CheckoutInput,
): Promise<{ session_id: string; url: string | null }> {
  const { rows } = await dependencies.db.query<{ email: string | null; stripe_customer_id: string | null }>(
    'select email, stripe_customer_id from accounts where id = $1',
    [accountId],
  );
  const account = rows[0];
  if (account === undefined) throw accountNotFound(accountId);
  const params = await sessionParams(dependencies, accountId, input);
  if (account.stripe_customer_id !== null) params.customer = account.stripe_customer_id;
  else if (account.email !== null) params.customer_email = account.email;
  if (dependencies.gateway === undefined) throw new StripeUnavailableError('Stripe is not configured (STRIPE_SECRET_KEY)');
  const session = await dependencies.gateway.createCheckoutSession(params, checkoutIdempotencyKey(accountId, input, params));
  return { session_id: session.id, url: session.url };
}

/**
 * The idempotency key of a checkout, derived from what it is for: the account, the item, a hash
 * of the parameters, and the minute. A client that retries after a timeout gets the session it
 * already asked for; a checkout asked for later is a new one.
 */
export const checkoutKeyWindowSeconds = 60;

export function checkoutIdempotencyKey(accountId: string, input: CheckoutInput, params: Stripe.Checkout.SessionCreateParams, now = Date.now()): string {
  const window = Math.floor(now / 1000 / checkoutKeyWindowSeconds);
  return `checkout:${accountId}:${input.plan_id ?? input.pack_id}:${payloadHash(params).slice(0, 16)}:${window}`;
}

async function sessionParams(
  dependencies: { catalog: Catalog; trials: TrialGate },
  accountId: string,
  input: CheckoutInput,
): Promise<Stripe.Checkout.SessionCreateParams> {
  const common = { client_reference_id: accountId, success_url: input.success_url, cancel_url: input.cancel_url };
  if (input.pack_id !== undefined) {
    const pack = dependencies.catalog.credit_packs.find((candidate) => candidate.id === input.pack_id);
    if (pack === undefined) throw new TallyError('plan_not_found', 404, `no credit pack ${input.pack_id}`);
    const metadata = { [accountMetadataKey]: accountId, [packMetadataKey]: pack.id };
    return { ...common, mode: 'payment', line_items: [{ price: pack.price, quantity: 1 }], metadata, payment_intent_data: { metadata } };
  }
  const plan = dependencies.catalog.plans.find((candidate) => candidate.id === input.plan_id);
  const price = input.interval === undefined ? undefined : plan?.prices[input.interval];
  if (plan === undefined || price === undefined) throw new TallyError('plan_not_found', 404, `no plan ${input.plan_id} billed by the ${input.interval}`);
  const metadata = { [accountMetadataKey]: accountId };
  const subscriptionData: Stripe.Checkout.SessionCreateParams.SubscriptionData = { metadata };
  if (input.trial === true) {
    if (plan.trial === undefined) throw new TallyError('trial_not_eligible', 403, `plan ${plan.id} has no trial`, { reason: 'plan_has_no_trial' });
    const refusal = await dependencies.trials.refusal(accountId);
    if (refusal !== undefined) throw new TallyError('trial_not_eligible', 403, `no trial for account ${accountId}: ${refusal}`, { reason: refusal });
    subscriptionData.trial_period_days = plan.trial.days;
  }
  return { ...common, mode: 'subscription', line_items: [{ price, quantity: 1 }], metadata, subscription_data: subscriptionData };
}
