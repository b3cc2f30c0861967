import { z } from 'zod';
import { rateCardIdSchema } from '../../pricing/meters.js';
import { type RateCards, publishRateCardInputSchema } from '../../pricing/rate-cards.js';
import { rateCardVersionSchema } from '../entities.js';
import { answer, refusals } from '../responses.js';
import { defineRoute, parseInput, type RouteDefinition } from '../route.js';

/** Rate cards: the app reads the versions in effect; an operator publishes and lists versions. */
const cardId = (params: Record<string, string>): string => parseInput(rateCardIdSchema, params.id, 'id');

export function pricingRoutes(rateCards: RateCards): RouteDefinition[] {
  return [
    defineRoute({
      method: 'GET',
      url: '/v1/rate-cards',
      access: 'app',
      tag: 'pricing',
      summary: 'The version of every rate card in effect now, and the version scheduled next (null when none is)',
      responses: {
        200: answer(
          'every rate card',
          z.object({ rate_cards: z.array(rateCardVersionSchema.extend({ next: rateCardVersionSchema.nullable() })) }),
        ),
      },
      handler: async () => ({ status: 200, body: await rateCards.current() }),
    }),
    defineRoute({
      method: 'PUT',
      url: '/v1/admin/rate-cards/:id',
      access: 'admin',
      tag: 'admin',
      summary:
        'Publish a new version of a rate card: rates for every dimension of every meter, effective now or at `effective_at` (later; up to 60 s in the past means now). Spends already made keep the version that priced them',
      body: publishRateCardInputSchema,
      responses: {
        200: answer('the version published', rateCardVersionSchema),
        ...refusals(
          [
            'invalid_request',
            'a rate that is not a decimal string with at most 12 decimal places, a rate for an unknown meter or dimension, a missing rate, or effective_at more than 60 s in the past',
          ],
          'rate_card_not_found',
        ),
      },
      handler: async ({ params, body }) => ({ status: 200, body: await rateCards.publish(cardId(params), body) }),
    }),
    defineRoute({
      method: 'GET',
      url: '/v1/admin/rate-cards/:id/versions',
      access: 'admin',
      tag: 'admin',
      summary: 'Every version of a rate card, newest published first',
      responses: {
        200: answer('the versions', z.object({ versions: z.array(rateCardVersionSchema) })),
        ...refusals('rate_card_not_found'),
      },
      handler: async ({ params }) => ({ status: 200, body: await rateCards.versions(cardId(params)) }),
    }),
  ];
}
