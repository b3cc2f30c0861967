import { z } from 'zod';
import { checkoutInputSchema, createCheckout, type TrialGate } from '../../billing/checkout.js';
import type { Catalog } from '../../billing/catalog.js';
import type { ClaimHasher } from '../../billing/claim-hasher.js';
import { trialEligibility } from '../../billing/trials.js';
import type { Database } from '../../db/database.js';
import { TallyError, accountNotFound } from '../../errors.js';
import { signClientReference } from '../../billing/client-reference.js';
import { accountIdSchema } from '../../ledger/commands.js';
import type { StripeGateway } from '../../stripe/gateway.js';
import { inboxListSizeMax, listEvents, type WebhookIntake } from '../../webhooks/inbox.js';
import { verifyWebhook } from '../../stripe/signature.js';
import type { WebhookWorker } from '../../webhooks/worker.js';
import type { Limiters } from '../rate-limits.js';
import { inboxEventSchema, timestampSchema } from '../entities.js';
import { answer, errorCatalog, refusals } from '../responses.js';
import { accountIdParam, bodyLimitLargeBytes, defineRoute, parseInput, type RouteDefinition } from '../route.js';

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
    rawBody: true,
    responses: {
      200: answer('stored (duplicate: true when it was stored before)', z.object({ received: z.literal(true), duplicate: z.boolean() })),
      ...refusals(
        'invalid_signature',
        ['rate_limited', 'too many bad signatures from this address (Retry-After)'],
        'stripe_not_configured',
      ),
    },
    handler: async ({ request }) => {
      if (dependencies.webhookSecrets.length === 0) throw new TallyError('stripe_not_configured', 503, 'STRIPE_WEBHOOK_SECRET is not set');
      const raw = Buffer.isBuffer(request.body) ? request.body : Buffer.from('');
      const signature = request.headers['stripe-signature'];
      let event: ReturnType<typeof verifyWebhook>;
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

// Every refusal reason a trial can have (the kinds of claim, and the plan's lack of a trial at checkout).
const eligibilityAnswerSchema = z.object({
  eligible: z.boolean(),
  reason: errorCatalog.trial_not_eligible.details.reason.exclude(['plan_has_no_trial']).optional(),
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
        200: answer(
          'a Stripe Checkout Session to redirect the customer to',
          z.object({ session_id: z.string(), url: z.string().nullable() }),
        ),
        ...refusals(
          [
            'invalid_request',
            'a field is wrong, or success_url or cancel_url is not https (http only for this machine) or not on TALLY_CHECKOUT_URL_HOSTS',
          ],
          'trial_not_eligible',
          'plan_not_found',
          'account_not_found',
          ['rate_limited', 'too many checkout sessions for this account (Retry-After)'],
          'stripe_error',
          'stripe_unavailable',
        ),
      },
      // Each session is a call to Stripe: counted per account, before the body is read.
      beforeBody: (request) => limiters.checkouts.count(request),
      handler: async ({ params, body }) => ({
        status: 200,
        body: await createCheckout(dependencies, accountIdParam(params), body),
      }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/client-reference',
      access: 'app',
      personalData: true,
      tag: 'stripe',
      summary:
        "A signed client_reference_id for the account, to put in a Payment Link URL or a pricing table's client-reference-id: Tally attributes the purchase to the account only by such a reference (it does not expire)",
      responses: { 200: answer('the signed reference', z.object({ client_reference_id: z.string() })), ...refusals('account_not_found') },
      handler: async ({ params }) => {
        const accountId = accountIdParam(params);
        const { rowCount } = await dependencies.db.query('select 1 from accounts where id = $1', [accountId]);
        if (rowCount === 0) throw accountNotFound(accountId);
        return { status: 200, body: { client_reference_id: signClientReference(dependencies.hasher, accountId) } };
      },
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/trial-eligibility',
      access: 'app',
      personalData: true,
      tag: 'stripe',
      summary:
        'Whether the account (and the email and device given) may start a trial; creates nothing. Prefer the POST: a query string is kept by proxies and logs',
      query: eligibilitySchema,
      responses: {
        200: answer('whether a trial would be granted, and why not', eligibilityAnswerSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, query }) => eligibility(params.id, query),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/accounts/:id/trial-eligibility',
      access: 'app',
      personalData: true,
      tag: 'stripe',
      summary: 'Whether the account (and the email and device given in the body) may start a trial; creates nothing',
      body: eligibilitySchema,
      responses: {
        200: answer('whether a trial would be granted, and why not', eligibilityAnswerSchema),
        ...refusals('account_not_found'),
      },
      handler: async ({ params, body }) => eligibility(params.id, body),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/webhook-events',
      access: 'admin',
      tag: 'admin',
      summary: 'The webhook inbox, newest first',
      query: webhookQuerySchema,
      responses: { 200: answer('the inbox rows, newest first', z.object({ events: z.array(inboxEventSchema) })) },
      handler: async ({ query }) => ({ status: 200, body: { events: await listEvents(dependencies.db, query) } }),
    }),
    defineRoute({
      method: 'POST',
      url: '/v1/admin/webhook-events/:event_id/replay',
      access: 'admin',
      tag: 'admin',
      summary: 'Apply a stored event again (its effects stay exactly once)',
      responses: {
        200: answer(
          'what applying the event again did',
          z.object({ event_id: z.string(), outcome: z.enum(['processed', 'ignored', 'retrying', 'waiting', 'failed', 'skipped']) }),
        ),
        ...refusals('event_not_found'),
      },
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
      responses: {
        200: answer(
          "the breaker's state (configured: false when no Stripe key is set)",
          z.object({
            state: z.enum(['closed', 'open', 'half_open', 'isolated']),
            failures: z.int().min(0),
            opened_at: timestampSchema.nullable(),
            configured: z.literal(false).optional(),
          }),
        ),
      },
      handler: async () => ({
        status: 200,
        body: dependencies.gateway?.status() ?? { state: 'closed', failures: 0, opened_at: null, configured: false },
      }),
    }),
  ];
}
