import { z } from 'zod';
import { checkoutInputSchema, createCheckout, type TrialGate } from '../../billing/checkout.js';
import type { Catalog } from '../../billing/catalog.js';
import { trialEligibility, type ClaimHasher } from '../../billing/trials.js';
import type { Database } from '../../db/database.js';
import { TallyError, accountNotFound } from '../../errors.js';
import { signClientReference } from '../../billing/client-reference.js';
import { accountIdSchema } from '../../ledger/commands.js';
import type { StripeGateway } from '../../stripe/gateway.js';
import { inboxListSizeMax, listEvents, type WebhookIntake } from '../../stripe/inbox.js';
import { verifyWebhook } from '../../stripe/signature.js';
import type { WebhookWorker } from '../../stripe/worker.js';
import type { Limiters } from '../rate-limits.js';
import { bodyLimitLargeBytes, defineRoute, parseInput, type RouteDefinition } from '../route.js';

/**
 * Stripe's side of the API: webhook intake (verify, store, answer; the worker applies later),
 * checkout, and the operators' view of the inbox and the circuit breaker.
 */
export interface StripeRouteDependencies {
  db: Database;
  catalog: Catalog;
  gateway: StripeGateway | undefined;
  worker: WebhookWorker;
  /** Stores verified deliveries with group commit. */
  intake: WebhookIntake;
  webhookSecrets: string[];
  trials: TrialGate;
  hasher: ClaimHasher;
  checkoutUrlHosts?: string[] | undefined;
}

/** Registered in a scope whose JSON parser keeps the raw body, which the signature covers. */
export function webhookRoute(dependencies: StripeRouteDependencies, limiters: Limiters): RouteDefinition {
  return defineRoute({
    method: 'POST',
    url: '/webhooks/stripe',
    access: 'none',
    tag: 'stripe',
    summary: "Stripe's webhooks: the signature is checked, the event stored, then 200 (also for duplicates and ignored types)",
    bodyLimitBytes: bodyLimitLargeBytes,
    responses: {
      200: '{received: true, duplicate}',
      400: 'invalid_signature, nothing written',
      413: 'payload_too_large',
      429: 'rate_limited {retry_after_seconds}: too many bad signatures from this address (Retry-After)',
      503: 'no webhook secret configured',
    },
    handler: async ({ request }) => {
      if (dependencies.webhookSecrets.length === 0) throw new TallyError('stripe_not_configured', 503, 'STRIPE_WEBHOOK_SECRET is not set');
      const raw = Buffer.isBuffer(request.body) ? request.body : Buffer.from('');
      const signature = request.headers['stripe-signature'];
      let event;
      try {
        event = verifyWebhook(raw, Array.isArray(signature) ? signature[0] : signature, dependencies.webhookSecrets);
      } catch (error) {
        // Counted per address; past the limit the answer becomes 429 instead of 400. A good
        // signature is never refused, even from a counted address: behind a proxy every sender
        // shares one address, and bad signatures must not be a way to hold Stripe's events back.
        if (error instanceof TallyError) await limiters.signatureFailures.count(request);
        throw error;
      }
      // Settles once the event's row is committed, shared with whatever arrived with it.
      const stored = await dependencies.intake.store(event, raw);
      if (stored === 'stored') dependencies.worker.nudge();
      return { status: 200, body: { received: true, duplicate: stored === 'duplicate' } };
    },
  });
}

const webhookQuerySchema = z.strictObject({
  status: z.enum(['pending', 'processed', 'ignored', 'failed']).optional(),
  type: z.string().min(1).max(100).optional(),
  limit: z.coerce.number().int().min(1).max(inboxListSizeMax).default(100),
});

const eligibilitySchema = z.strictObject({
  email: z.email().max(320).optional(),
  device_fingerprint: z.string().min(1).max(512).optional(),
});

export function stripeRoutes(dependencies: StripeRouteDependencies, limiters: Limiters): RouteDefinition[] {
  const eligibility = async (accountIdParam: string | undefined, reported: z.infer<typeof eligibilitySchema>) => ({
    status: 200,
    body: await trialEligibility(dependencies.db, dependencies.hasher, parseInput(accountIdSchema, accountIdParam, 'id'), {
      email: reported.email,
      deviceFingerprint: reported.device_fingerprint,
    }),
  });
  return [
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/checkout',
      access: 'app',
      tag: 'stripe',
      summary: 'A Stripe Checkout Session for a plan (optionally with its trial) or a credit pack',
      body: checkoutInputSchema,
      responses: {
        200: '{session_id, url}',
        403: 'trial_not_eligible {reason}',
        404: 'plan_not_found or account_not_found',
        429: 'rate_limited {retry_after_seconds}: too many checkout sessions for this account (Retry-After)',
        502: 'stripe_error: Stripe refused the request (the detail is in the log)',
        503: 'stripe_unavailable',
      },
      // Each session is a call to Stripe: counted per account, before the body is read.
      beforeBody: (request) => limiters.checkouts.count(request),
      handler: async ({ params, body }) => ({
        status: 200,
        body: await createCheckout(dependencies, parseInput(accountIdSchema, params.id, 'id'), body),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/client-reference',
      access: 'app',
      tag: 'stripe',
      summary:
        "A signed client_reference_id for the account, to put in a Payment Link URL or a pricing table's client-reference-id: Tally attributes the purchase to the account only by such a reference (it does not expire)",
      responses: { 200: '{client_reference_id}', 404: 'account_not_found' },
      handler: async ({ params }) => {
        const accountId = parseInput(accountIdSchema, params.id, 'id');
        const { rowCount } = await dependencies.db.query('select 1 from accounts where id = $1', [accountId]);
        if (rowCount === 0) throw accountNotFound(accountId);
        return { status: 200, body: { client_reference_id: signClientReference(dependencies.hasher, accountId) } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/trial-eligibility',
      access: 'app',
      tag: 'stripe',
      summary: 'Whether the account (and the email and device given) may start a trial; creates nothing. Prefer the POST: a query string is kept by proxies and logs',
      query: eligibilitySchema,
      responses: { 200: '{eligible, reason?}', 404: 'account_not_found' },
      handler: async ({ params, query }) => eligibility(params.id, query),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/trial-eligibility',
      access: 'app',
      tag: 'stripe',
      summary: 'Whether the account (and the email and device given in the body) may start a trial; creates nothing',
      body: eligibilitySchema,
      responses: { 200: '{eligible, reason?}', 404: 'account_not_found' },
      handler: async ({ params, body }) => eligibility(params.id, body),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/webhook-events',
      access: 'admin',
      tag: 'admin',
      summary: 'The webhook inbox, newest first',
      query: webhookQuerySchema,
      responses: { 200: '{events: [...]}' },
      handler: async ({ query }) => ({ status: 200, body: { events: await listEvents(dependencies.db, query) } }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/admin/webhook-events/:event_id/replay',
      access: 'admin',
      tag: 'admin',
      summary: 'Apply a stored event again (its effects stay exactly once)',
      responses: { 200: '{event_id, outcome}', 404: 'event_not_found' },
      handler: async ({ params }) => {
        const eventId = params.event_id ?? '';
        const outcome = await dependencies.worker.replay(eventId);
        if (outcome === undefined) throw new TallyError('event_not_found', 404, `no stored event ${eventId}`);
        return { status: 200, body: { event_id: eventId, outcome } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/stripe-breaker',
      database: false,
      access: 'admin',
      tag: 'admin',
      summary: "The Stripe API circuit breaker's state",
      responses: { 200: '{state, failures, opened_at}' },
      handler: async () => ({ status: 200, body: dependencies.gateway?.status() ?? { state: 'closed', failures: 0, opened_at: null, configured: false } }),
    }),
  ];
}
