import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { findPrice, parseCatalog } from '../../src/billing/catalog.js';

const plan = { id: 'plus', name: 'Plus', prices: { month: 'price_m', year: 'price_y' }, credits_per_month: 4000 };
const meter = { id: 'm', dimensions: ['input', 'output'] };
const free = { id: 'free', name: 'Free', free: true, recurring_grants: [{ credits: 50, every: 'day' }] };
const standardCard = { id: 'standard', rates: { m: { input: '0.000125', output: '0.001' } } };

/** A catalog with one meter and one card, the card's fields and the catalog's overridden. */
function priced(card: Record<string, unknown>, catalog: Record<string, unknown> = {}): Record<string, unknown> {
  return { plans: [plan], meters: [meter], rate_cards: [{ ...standardCard, ...card }], default_rate_card: 'standard', ...catalog };
}

describe('plan catalog', () => {
  it('accepts the shipped example and finds plans and packs by price', () => {
    const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
    const match = findPrice(catalog, 'price_plus_yearly');
    assert.equal(match?.kind, 'plan');
    assert.equal(match?.kind === 'plan' ? match.interval : undefined, 'year');
    assert.equal(findPrice(catalog, 'price_pack_1000')?.kind, 'pack');
    assert.equal(findPrice(catalog, 'price_unknown'), undefined);
    assert.equal(catalog.limits.admin_adjustment_credits_max, 100000);
    assert.ok(catalog.meters.some((candidate) => candidate.id === 'openai/gpt-5'));
    assert.equal(catalog.default_rate_card, 'standard');
  });

  it('accepts rates with 12 decimal places, zero, and whole credits', () => {
    const catalog = parseCatalog(priced({ rates: { m: { input: '0.000000000001', output: '0' } } }, { meters: [meter] }));
    assert.equal(catalog.rate_cards[0]?.rates.m?.input, '0.000000000001');
    assert.doesNotThrow(() => parseCatalog(priced({ rates: { m: { input: '12', output: '999999999999999.5' } } })));
  });

  it('accepts a free plan with a daily allowance and one meter, and paid plans with every meter and features', () => {
    const catalog = parseCatalog(
      priced(
        {},
        {
          plans: [
            { ...free, entitlements: { meters: ['m'], features: { projects: 1 } } },
            { ...plan, entitlements: { meters: 'all', features: { projects: 10, custom_agents: true, tier: 'gold' } } },
            { ...plan, id: 'bare', prices: { month: 'price_bare' }, recurring_grants: [{ credits: 5, every: 'week' }] },
          ],
        },
      ),
    );
    assert.deepEqual(catalog.plans[0]?.prices, {});
    assert.equal(catalog.plans[0]?.credits_per_month, 0);
    assert.deepEqual(catalog.plans[0]?.entitlements, { meters: ['m'], features: { projects: 1 } });
    assert.deepEqual(catalog.plans[1]?.entitlements?.features, { projects: 10, custom_agents: true, tier: 'gold' });
    assert.equal(catalog.plans[2]?.entitlements, undefined);
    assert.deepEqual(catalog.plans[2]?.recurring_grants, [{ credits: 5, every: 'week' }]);
    assert.deepEqual(parseCatalog({ plans: [{ ...plan, entitlements: {} }] }).plans[0]?.entitlements, { meters: 'all', features: {} });
  });

  const refusals: [string, unknown, RegExp][] = [
    [
      'two plans sharing a price',
      { plans: [plan, { ...plan, id: 'other', prices: { month: 'price_m' } }] },
      /plans\.1\.prices\.month: price price_m is already used by plan plus/,
    ],
    ['a pack sharing a plan price', { plans: [plan], credit_packs: [{ id: 'p', price: 'price_y', credits: 5 }] }, /credit_packs\.0\.price/],
    ['fractional credits', { plans: [{ ...plan, credits_per_month: 10.5 }] }, /plans\.0\.credits_per_month/],
    ['a plan without prices', { plans: [{ ...plan, prices: {} }] }, /plans\.0\.prices: a plan needs a month or a year price/],
    ['an unknown field', { plans: [{ ...plan, colour: 'red' }] }, /plans\.0/],
    ['a duplicate id', { plans: [plan, { ...plan, prices: { month: 'price_other' } }] }, /plans\.1\.id: duplicate id plus/],
    ['a negative trial', { plans: [{ ...plan, trial: { days: 7, credits: -1 } }] }, /plans\.0\.trial\.credits/],
    ['a rate that is a number', priced({ rates: { m: { input: 0.5, output: '1' } } }), /rate_cards\.0\.rates\.m\.input: a decimal string/],
    [
      'a rate with 13 decimal places',
      priced({ rates: { m: { input: '0.0000000000001', output: '1' } } }),
      /rate_cards\.0\.rates\.m\.input: a decimal string .* at most 12 decimal places/,
    ],
    [
      'a rate in exponent form',
      priced({ rates: { m: { input: '1e-3', output: '1' } } }),
      /rate_cards\.0\.rates\.m\.input: a decimal string/,
    ],
    ['a negative rate', priced({ rates: { m: { input: '-0.1', output: '1' } } }), /rate_cards\.0\.rates\.m\.input: a decimal string/],
    ['a rate without a leading digit', priced({ rates: { m: { input: '.5', output: '1' } } }), /rate_cards\.0\.rates\.m\.input/],
    [
      'a rate for an unknown meter',
      priced({ rates: { m: { input: '1', output: '1' }, other: { input: '1' } } }),
      /rate_cards\.0\.rates\.other: unknown meter other/,
    ],
    [
      'a rate for an unknown dimension',
      priced({ rates: { m: { input: '1', output: '1', images: '2' } } }),
      /rate_cards\.0\.rates\.m\.images: unknown dimension images of meter m/,
    ],
    [
      'a dimension without a rate',
      priced({ rates: { m: { input: '1' } } }),
      /rate_cards\.0\.rates\.m\.output: no rate for dimension output/,
    ],
    ['a meter without rates', priced({ rates: {} }), /rate_cards\.0\.rates\.m: no rates for meter m/],
    ['a plan naming an unknown card', priced({}, { plans: [{ ...plan, rate_card: 'gold' }] }), /plans\.0\.rate_card: no rate card gold/],
    ['an unknown default card', priced({}, { default_rate_card: 'gold' }), /default_rate_card: no rate card gold/],
    ['rate cards without a default', priced({}, { default_rate_card: undefined }), /default_rate_card: required with rate cards/],
    ['meters without rate cards', { plans: [plan], meters: [meter] }, /rate_cards: meters need at least one rate card/],
    ['a meter id with a space', priced({}, { meters: [{ ...meter, id: 'my meter' }] }), /meters\.0\.id: letters, digits/],
    ['a meter without dimensions', priced({}, { meters: [{ ...meter, dimensions: [] }] }), /meters\.0\.dimensions/],
    [
      'a dimension named twice',
      priced({}, { meters: [{ ...meter, dimensions: ['input', 'input'] }] }),
      /meters\.0\.dimensions: dimensions must be distinct/,
    ],
    ['a duplicate meter', priced({}, { meters: [meter, meter] }), /meters\.1\.id: duplicate meter m/],
    ['a duplicate rate card', priced({}, { rate_cards: [standardCard, standardCard] }), /rate_cards\.1\.id: duplicate rate card standard/],
    ['a second free plan', { plans: [free, { ...free, id: 'free2' }] }, /plans\.1\.free: only one plan may be free \(free already is\)/],
    ['a free plan with a price', { plans: [{ ...free, prices: { month: 'price_free' } }] }, /plans\.0\.prices: a free plan has no prices/],
    ['a free plan with credits per month', { plans: [{ ...free, credits_per_month: 10 }] }, /plans\.0\.credits_per_month: a free plan/],
    ['a free plan with a trial', { plans: [{ ...free, trial: { days: 7, credits: 5 } }] }, /plans\.0\.trial: a free plan has no trial/],
    ['a free plan with a rollover', { plans: [{ ...free, rollover: { max_credits: 5 } }] }, /plans\.0\.rollover: a free plan/],
    ['free given as false', { plans: [{ ...plan, free: false }] }, /plans\.0\.free: true, or left out/],
    [
      'a paid plan without credits per month',
      { plans: [{ ...plan, credits_per_month: undefined }] },
      /plans\.0\.credits_per_month: required/,
    ],
    [
      'entitled meters that are not a list or "all"',
      priced({}, { plans: [{ ...plan, entitlements: { meters: 'some' } }] }),
      /plans\.0\.entitlements\.meters: "all" or a list of meter ids/,
    ],
    [
      'an entitled meter the catalog does not have',
      priced({}, { plans: [{ ...plan, entitlements: { meters: ['m', 'gpt'] } }] }),
      /plans\.0\.entitlements\.meters\.1: no meter gpt in the catalog/,
    ],
    [
      'an entitled meter listed twice',
      priced({}, { plans: [{ ...plan, entitlements: { meters: ['m', 'm'] } }] }),
      /plans\.0\.entitlements\.meters\.1: meter m is listed twice/,
    ],
    [
      'a feature that is an object',
      { plans: [{ ...plan, entitlements: { features: { projects: { max: 3 } } } }] },
      /plans\.0\.entitlements\.features\.projects: a number, a boolean or a string/,
    ],
    [
      'a feature name with a space',
      { plans: [{ ...plan, entitlements: { features: { 'my projects': 3 } } }] },
      /plans\.0\.entitlements\.features\.my projects: a feature name is 1 to 64 characters/,
    ],
    ['an unknown field in entitlements', { plans: [{ ...plan, entitlements: { models: 'all' } }] }, /plans\.0\.entitlements/],
    [
      'a recurring grant every year',
      { plans: [{ ...free, recurring_grants: [{ credits: 5, every: 'year' }] }] },
      /plans\.0\.recurring_grants\.0\.every: one of day, week, month/,
    ],
    [
      'a recurring grant of no credits',
      { plans: [{ ...free, recurring_grants: [{ credits: 0, every: 'day' }] }] },
      /plans\.0\.recurring_grants\.0\.credits/,
    ],
    [
      'two recurring grants of one cadence',
      {
        plans: [
          {
            ...plan,
            recurring_grants: [
              { credits: 5, every: 'day' },
              { credits: 6, every: 'day' },
            ],
          },
        ],
      },
      /plans\.0\.recurring_grants\.1\.every: a second grant every day/,
    ],
    [
      'more than 3 recurring grants',
      { plans: [{ ...plan, recurring_grants: ['day', 'week', 'month', 'day'].map((every) => ({ credits: 1, every })) }] },
      /plans\.0\.recurring_grants/,
    ],
  ];
  for (const [name, value, message] of refusals) {
    it(`refuses ${name}, naming the field`, () => {
      assert.throws(() => parseCatalog(value), message);
    });
  }
});

describe('checkout idempotency keys', () => {
  it('are the same for a retry within the minute and differ for another item or a later minute', async () => {
    const { checkoutIdempotencyKey } = await import('../../src/billing/checkout.js');
    const input = { plan_id: 'plus', interval: 'month' as const, success_url: 'https://a.test/ok', cancel_url: 'https://a.test/no' };
    const params = { mode: 'subscription' as const, line_items: [{ price: 'price_plus_monthly', quantity: 1 }] };
    const at = Date.parse('2030-01-01T00:00:10Z');
    assert.equal(checkoutIdempotencyKey('a1', input, params, at), checkoutIdempotencyKey('a1', input, params, at + 30_000));
    assert.notEqual(checkoutIdempotencyKey('a1', input, params, at), checkoutIdempotencyKey('a1', input, params, at + 60_000));
    assert.notEqual(checkoutIdempotencyKey('a1', input, params, at), checkoutIdempotencyKey('a2', input, params, at));
    assert.notEqual(
      checkoutIdempotencyKey('a1', input, params, at),
      checkoutIdempotencyKey('a1', input, { ...params, line_items: [{ price: 'price_plus_yearly', quantity: 1 }] }, at),
    );
  });
});
