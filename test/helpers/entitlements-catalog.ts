import { readFileSync } from 'node:fs';
import { type Catalog, parseCatalog } from '../../src/billing/catalog.js';

const mini = 'openai/gpt-5-mini';
const gpt5 = 'openai/gpt-5';
const images = 'images/generate';

/**
 * The example catalog with a free plan (one cheap model, 50 credits a day), a starter plan with
 * two meters, a plus plan with every meter and 20 credits a day, and a pro plan with gpt-5 only.
 */
export function entitlementsCatalog(): Catalog {
  const example = JSON.parse(readFileSync('plans.example.json', 'utf8')) as { plans: Record<string, unknown>[] };
  const entitled: Record<string, Record<string, unknown>> = {
    starter: { entitlements: { meters: [mini, images], features: { projects: 3, custom_agents: false, support: 'email' } } },
    plus: {
      entitlements: { meters: 'all', features: { projects: 10, custom_agents: true } },
      recurring_grants: [{ credits: 20, every: 'day' }],
    },
    pro: { entitlements: { meters: [gpt5], features: { projects: 5, custom_agents: true, support: 'phone' } } },
  };
  example.plans = [
    {
      id: 'free',
      name: 'Free',
      free: true,
      entitlements: { meters: [mini], features: { projects: 1 } },
      recurring_grants: [{ credits: 50, every: 'day' }],
    },
    ...example.plans.map((plan) => ({ ...plan, ...entitled[String(plan.id)] })),
  ];
  return parseCatalog(example);
}
