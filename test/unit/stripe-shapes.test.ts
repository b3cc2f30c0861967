import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';
import { invoiceLines, invoiceSubscriptionId, subscriptionState } from '../../src/stripe/shapes.js';

// The project's fixtures are Stripe's own example objects: they must match, field for field,
// the copy of Stripe's published fixtures kept beside them (with Stripe's licence), and the
// readers must find what Tally needs in them.
const fixtures = JSON.parse(readFileSync(new URL('../fixtures/stripe-objects.json', import.meta.url), 'utf8')) as Record<
  string,
  Record<string, unknown>
>;
const published = new URL('../fixtures/stripe-openapi-fixtures3.json', import.meta.url);

it("keeps the fixtures identical to Stripe's published objects", () => {
  const resources = (JSON.parse(readFileSync(published, 'utf8')) as { resources: Record<string, unknown> }).resources;
  assert.ok(Object.keys(fixtures).length >= 9, 'the fixtures hold the objects Tally reads');
  for (const [name, object] of Object.entries(fixtures)) assert.deepEqual(object, resources[name], name);
});

it('reads the current shapes: subscription under parent, price under pricing, periods on items', () => {
  const invoice = structuredClone(fixtures.invoice ?? {});
  assert.equal(invoiceSubscriptionId(invoice), 'subscription');
  const [line] = invoiceLines(invoice);
  assert.deepEqual([line?.periodStart, line?.periodEnd, line?.proration], [1721954054, 1721954054, true]);
  const state = subscriptionState(structuredClone(fixtures.subscription ?? {}));
  assert.equal(state?.priceId, 'price_1PgafmB7WZ01zgkW6dKueIc5');
  assert.equal(state?.periodStart, 1896570518);
  assert.equal(state?.periodEnd, 976287773);
});

it('tolerates the older shapes: invoice.subscription, line.price, line.proration', () => {
  const older = {
    id: 'in_old',
    subscription: 'sub_old',
    lines: { data: [{ period: { start: 1, end: 2 }, price: { id: 'price_old' }, proration: true, amount: 5 }] },
  };
  assert.equal(invoiceSubscriptionId(older), 'sub_old');
  assert.deepEqual(invoiceLines(older), [
    {
      id: undefined,
      priceId: 'price_old',
      quantity: 1,
      proration: true,
      periodStart: 1,
      periodEnd: 2,
      amount: 5,
      subscription: undefined,
      subscriptionItem: undefined,
    },
  ]);
});
