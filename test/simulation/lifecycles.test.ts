import assert from 'node:assert/strict';
import { it } from 'node:test';
import { runSeed } from '../../simulation/simulate.js';
import { allKinds, generate, kindOf } from '../../simulation/workload.js';

// Proves invariants 13, 15, 16, 17 and 18: fixed seeds of whole customer lifecycles, every step kind of
// the simulator (subscriptions with one or two items, trials, plan, seat and interval changes with
// every proration behaviour, cancellations at a month start or delivered late, failed payments,
// packs, refunds, disputes, usage, batches, holds, spends on a boundary, spend limits, operators'
// grants and adjustments, auto top-up with every card outcome, priced spends, holds, batches and
// quotes with rate card changes mid-stream, plans whose entitlements and recurring grants change
// with the subscription, a restart mid-burst and operator replays), played against the real Tally (PostgreSQL, HTTP API, signed webhooks delivered 1 to 5
// times, shuffled, to two instances at once), end in exactly the balances, grants, answers and
// event log of the reference model, with every invariant held and reconciliation clean.
export const enabledKinds = new Set<string>(allKinds);
const ciSeeds = Array.from({ length: 13 }, (_, index) => 1000 + index);
// TALLY_SIMULATION_SEEDS (comma separated) plays only those seeds, unshrunk: npm run mutate
// runs a few seeds against each mutant.
const chosenSeeds = process.env.TALLY_SIMULATION_SEEDS?.split(',').map(Number);
const seeds = chosenSeeds ?? ciSeeds;
const lifecyclesPerSeed = 4;

it("CI's seeds cover at least 50 lifecycles and every enabled step kind", () => {
  assert.ok(ciSeeds.length * lifecyclesPerSeed >= 50);
  const covered = new Set(ciSeeds.flatMap((seed) => generate(seed, lifecyclesPerSeed, enabledKinds).map(kindOf)));
  for (const kind of enabledKinds) if (!kind.startsWith('chaos:')) assert.ok(covered.has(kind as never), `no seed plays ${kind}`);
});

/**
 * Open findings: seeds where the model (rewritten from SPEC on 2026-12-05, with new step kinds)
 * and Tally disagree, and it is not yet settled which one is wrong. They still run, and print
 * their disagreement as a TODO, until the finding is resolved (simulation/README.md, "Open
 * findings"). A seed leaves this list only by agreeing.
 */
const openFindings = new Map<number, string>();

for (const seed of seeds) {
  const finding = chosenSeeds === undefined ? openFindings.get(seed) : undefined;
  it(`seed ${seed}: Tally agrees with the reference model`, { todo: finding }, async () => {
    const outcome = await runSeed(seed, {
      lifecycles: lifecyclesPerSeed,
      kinds: enabledKinds,
      shrinkRunsMax: chosenSeeds === undefined && finding === undefined ? 10 : 0,
    });
    const shrunk = outcome.shrunk === undefined ? '' : `\nshrunk history:\n${JSON.stringify(outcome.shrunk.steps)}`;
    assert.deepEqual(outcome.result.failures, [], `replay: npm run simulate -- --seed ${seed} --lifecycles ${lifecyclesPerSeed}${shrunk}`);
  });
}
