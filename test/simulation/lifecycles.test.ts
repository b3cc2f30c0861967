import assert from 'node:assert/strict';
import { it } from 'node:test';
import { runSeed } from '../../simulation/simulate.js';
import { generate, kindOf } from '../../simulation/workload.js';

// Proves invariant 13 for the step kinds that Tally passes today: fixed seeds of whole customer
// lifecycles, played against the real Tally (PostgreSQL, HTTP API, signed webhooks delivered 1
// to 5 times, shuffled, to two instances at once, one restarted mid-burst in some seeds), end in
// exactly the balances, grants and answers of the reference model, with every invariant held
// and reconciliation clean. Kinds that still fail on the current code (every change whose
// invoice has an "unused time" line: change:always_invoice, change:create_prorations,
// change:seats, change:interval, change:yearly; and chaos:replay) are explained in
// simulation/README.md and join `enabledKinds` as their fixes land.
export const enabledKinds = new Set<string>([
  'subscribe:monthly',
  'subscribe:yearly',
  'subscribe:seats',
  'trial:converted',
  'trial:cancelled',
  'trial:refused',
  'change:none',
  'cancel:period_end',
  'cancel:now',
  'cancel:now_prorated',
  'payment:failed_recovered',
  'pack:checkout',
  'pack:link',
  'refund:partial',
  'refund:multiple',
  'refund:failed',
  'refund:yearly',
  'dispute:inquiry',
  'dispute:won',
  'dispute:lost',
  'usage',
  'batch',
  'hold:capture',
  'hold:void',
  'hold:expire',
  'chaos:restart',
]);
const seeds = Array.from({ length: 13 }, (_, index) => 1000 + index);
const lifecyclesPerSeed = 4;

it('the seeds cover at least 50 lifecycles and every enabled step kind', () => {
  assert.ok(seeds.length * lifecyclesPerSeed >= 50);
  const covered = new Set(seeds.flatMap((seed) => generate(seed, lifecyclesPerSeed, enabledKinds).map(kindOf)));
  for (const kind of enabledKinds) if (!kind.startsWith('chaos:')) assert.ok(covered.has(kind as never), `no seed plays ${kind}`);
});

for (const seed of seeds) {
  it(`seed ${seed}: Tally agrees with the reference model`, async () => {
    const outcome = await runSeed(seed, { lifecycles: lifecyclesPerSeed, kinds: enabledKinds, shrinkRunsMax: 10 });
    const shrunk = outcome.shrunk === undefined ? '' : `\nshrunk history:\n${JSON.stringify(outcome.shrunk.steps)}`;
    assert.deepEqual(outcome.result.failures, [], `replay: npm run simulate -- --seed ${seed} --lifecycles ${lifecyclesPerSeed}${shrunk}`);
  });
}
