import { autoTopUpInputSchema, readAutoTopUp, setAutoTopUp, type TopUpDependencies } from '../../billing/top-up-settings.js';
import { z } from 'zod';
import { timestampSchema } from '../entities.js';
import { answer, refusals } from '../responses.js';
import { accountIdParam, defineRoute, type RouteDefinition } from '../route.js';

const autoTopUpSchema = z.object({
  account_id: z.string(),
  enabled: z.boolean(),
  threshold: z.int().positive(),
  pack_id: z.string(),
  max_per_month: z.int().positive(),
  failures_in_row: z.int().min(0),
  updated_at: timestampSchema,
});

/** Auto top-up's setting; the job that pays top-ups runs in the background (billing/top-ups). */
export function topUpRoutes(dependencies: TopUpDependencies): RouteDefinition[] {
  return [
    defineRoute({
      method: 'GET',
      url: '/v1/accounts/:id/auto-top-up',
      access: 'app',
      tag: 'accounts',
      summary:
        'The auto top-up setting as the PUT answers it; an account that never saved one reads as turned off, with null for threshold, pack_id, max_per_month and updated_at',
      responses: {
        200: answer(
          'the setting',
          autoTopUpSchema.extend({
            threshold: z.int().positive().nullable(),
            pack_id: z.string().nullable(),
            max_per_month: z.int().positive().nullable(),
            updated_at: timestampSchema.nullable(),
          }),
        ),
        ...refusals('account_not_found'),
      },
      handler: async ({ params }) => ({
        status: 200,
        body: await readAutoTopUp(dependencies.db, accountIdParam(params)),
      }),
    }),
    defineRoute({
      method: 'PUT',
      url: '/v1/accounts/:id/auto-top-up',
      access: 'app',
      tag: 'accounts',
      summary:
        "Buy `pack_id` off-session (the customer's default payment method) whenever a spend leaves `available` below `threshold`, at most `max_per_month` times a UTC month; three failed payments in a row turn it off (topup.failed says so)",
      body: autoTopUpInputSchema,
      responses: {
        200: answer('the setting', autoTopUpSchema),
        ...refusals('account_not_found', 'pack_not_found', 'no_payment_method', 'stripe_error', 'stripe_unavailable'),
      },
      handler: async ({ params, body }) => ({
        status: 200,
        body: await setAutoTopUp(dependencies, accountIdParam(params), body),
      }),
    }),
  ];
}
