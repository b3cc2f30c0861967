import { type Catalog, parseCatalog } from '../src/billing/catalog.js';
import { testCatalog } from '../test/helpers/app.js';

/**
 * The simulator's catalog: the example catalog's plans, packs, meters and rate cards, with
 * entitlements, so that a plan change (an upgrade, a downgrade, a cancellation to the free plan)
 * changes which meters a priced spend may name mid-stream. Starter and the free plan lack the
 * big models, Pro lacks images, Plus has every meter.
 */
export function simulationCatalog(): Catalog {
  const base = testCatalog();
  const meters: Record<string, string[] | 'all'> = {
    starter: ['openai/gpt-5-mini', 'images/generate'],
    plus: 'all',
    pro: ['openai/gpt-5', 'openai/gpt-5-mini', 'anthropic/claude-sonnet-4.5'],
  };
  return parseCatalog({
    ...base,
    plans: [
      { id: 'free', name: 'Free', free: true, entitlements: { meters: ['openai/gpt-5-mini'], features: { projects: 1 } } },
      ...base.plans.map((plan) => ({ ...plan, entitlements: { meters: meters[plan.id] ?? 'all', features: {} } })),
    ],
  });
}
