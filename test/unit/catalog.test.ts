import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { findPrice, parseCatalog } from '../../src/billing/catalog.js';

const plan = { id: 'plus', name: 'Plus', prices: { month: 'price_m', year: 'price_y' }, credits_per_month: 4000 };

describe('plan catalog', () => {
  it('accepts the shipped example and finds plans and packs by price', () => {
    const catalog = parseCatalog(JSON.parse(readFileSync('plans.example.json', 'utf8')));
    const match = findPrice(catalog, 'price_plus_yearly');
    assert.equal(match?.kind, 'plan');
    assert.equal(match?.kind === 'plan' ? match.interval : undefined, 'year');
    assert.equal(findPrice(catalog, 'price_pack_1000')?.kind, 'pack');
    assert.equal(findPrice(catalog, 'price_unknown'), undefined);
    assert.equal(catalog.limits.admin_adjustment_credits_max, 100000);
  });

  const refusals: [string, unknown, RegExp][] = [
    [
      'two plans sharing a price',
      { plans: [plan, { ...plan, id: 'other', prices: { month: 'price_m' } }] },
      /plans\.1\.prices\.month: price price_m is already used by plan plus/,
    ],
    ['a pack sharing a plan price', { plans: [plan], credit_packs: [{ id: 'p', price: 'price_y', credits: 5 }] }, /credit_packs\.0\.price/],
    ['fractional credits', { plans: [{ ...plan, credits_per_month: 10.5 }] }, /plans\.0\.credits_per_month/],
    ['a plan without prices', { plans: [{ ...plan, prices: {} }] }, /plans\.0\.prices/],
    ['an unknown field', { plans: [{ ...plan, colour: 'red' }] }, /plans\.0/],
    ['a duplicate id', { plans: [plan, { ...plan, prices: { month: 'price_other' } }] }, /plans\.1\.id: duplicate id plus/],
    ['a negative trial', { plans: [{ ...plan, trial: { days: 7, credits: -1 } }] }, /plans\.0\.trial\.credits/],
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
