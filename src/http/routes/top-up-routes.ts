import { autoTopUpInputSchema, setAutoTopUp, type TopUpDependencies } from '../../billing/top-up-settings.js';
import { accountIdSchema } from '../../ledger/commands.js';
import { z } from 'zod';
import { timestampSchema } from '../entities.js';
import { answer, refusals } from '../responses.js';
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
        "Buy `pack_id` off-session (the customer's default payment method) whenever a spend leaves `available` below `threshold`, at most `max_per_month` times a UTC month; three failed payments in a row turn it off (topup.failed says so)",
      body: autoTopUpInputSchema,
      responses: {
        200: answer(
          'the setting',
          z.object({
            account_id: z.string(),
            enabled: z.boolean(),
            threshold: z.int().positive(),
            pack_id: z.string(),
            max_per_month: z.int().positive(),
            failures_in_row: z.int().min(0),
            updated_at: timestampSchema,
          }),
        ),
        ...refusals('account_not_found', 'pack_not_found', 'no_payment_method', 'stripe_error', 'stripe_unavailable'),
      },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await setAutoTopUp(dependencies, parseInput(accountIdSchema, params.id, 'id'), body),
      }),
    }),
  ];
}
