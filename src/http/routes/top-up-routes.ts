import { autoTopUpInputSchema, setAutoTopUp, type TopUpDependencies } from '../../billing/top-ups.js';
import { accountIdSchema } from '../../ledger/commands.js';
import { defineRoute, parseInput, type RouteDefinition } from '../route.js';

/** Auto top-up's setting; the job that pays top-ups runs in the background (billing/top-ups). */
export function topUpRoutes(dependencies: TopUpDependencies): RouteDefinition[] {
  return [
    defineRoute({
      method: 'PUT',
      url: '/v1/accounts/:id/auto-top-up',
      access: 'app',
      tag: 'accounts',
      summary:
        'Buy `pack_id` off-session (the customer\'s default payment method) whenever a spend leaves `available` below `threshold`, at most `max_per_month` times a UTC month; three failed payments in a row turn it off (topup.failed says so)',
      body: autoTopUpInputSchema,
      responses: {
        200: '{account_id, enabled, threshold, pack_id, max_per_month, failures_in_row, updated_at}',
        400: 'invalid_request naming the field',
        404: 'account_not_found or pack_not_found',
        409: 'no_payment_method: enabling needs a linked Stripe customer with a default payment method',
        502: 'stripe_error',
        503: 'stripe_unavailable',
      },
      handler: async ({ params, body }) => ({ status: 200, body: await setAutoTopUp(dependencies, parseInput(accountIdSchema, params.id, 'id'), body) }),
    }),
  ];
}
