import { type Catalog, parseCatalog } from '../src/billing/catalog.js';
import { testCatalog } from '../test/helpers/app.js';

/**
 * The simulator's catalog: the example catalog's plans, packs, meters and rate cards, with
 * entitlements, so that a plan change (an upgrade, a downgrade, a cancellation to the free plan)
 * changes which meters a priced spend may name mid-stream, and recurring grants of every cadence.
 * Starter and the free plan lack the big models, Pro lacks images, Plus has every meter.
 */
export function simulationCatalog(): Catalog {
  const base = testCatalog();
  const meters: Record<string, string[] | 'all'> = {
    starter: ['openai/gpt-5-mini', 'images/generate'],
    plus: 'all',
    pro: ['openai/gpt-5', 'openai/gpt-5-mini', 'anthropic/claude-sonnet-4.5'],
  };
  // A daily allowance on the free plan and on Plus (monthly or yearly), a weekly one on Starter,
  // a monthly one on Pro: every cadence, independent of the billing cycle.
  const recurring: Record<string, { credits: number; every: 'day' | 'week' | 'month' }[]> = {
    starter: [{ credits: 100, every: 'week' }],
    plus: [{ credits: 20, every: 'day' }],
    pro: [{ credits: 1000, every: 'month' }],
  };
  return parseCatalog({
    ...base,
    plans: [
      {
        id: 'free',
        name: 'Free',
        free: true,
        entitlements: { meters: ['openai/gpt-5-mini'], features: { projects: 1 } },
        recurring_grants: [{ credits: 50, every: 'day' }],
      },
      ...base.plans.map((plan) => ({
        ...plan,
        entitlements: { meters: meters[plan.id] ?? 'all', features: {} },
        recurring_grants: recurring[plan.id] ?? [],
      })),
    ],
  });
}
