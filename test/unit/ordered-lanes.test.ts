import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { OrderedLanes } from '../../src/webhooks/ordered-lanes.js';

describe('OrderedLanes', () => {
  it('never runs more tasks at once than its lanes, and never two sharing a key, and keeps submission order per key', async () => {
    // Proves, over random task sets: the bound holds, tasks that share a key never overlap, and
    // for each key its tasks start in the order they were submitted.
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 5 }),
        fc.array(
          fc.record({
            keys: fc.uniqueArray(fc.constantFrom('a', 'b', 'c', 'd', 'e', 'f'), { maxLength: 3 }),
            milliseconds: fc.integer({ min: 0, max: 3 }),
          }),
          { maxLength: 40 },
        ),
        async (lanesMax, specs) => {
          const lanes = new OrderedLanes<number>(lanesMax);
          const running = new Set<number>();
          let mostAtOnce = 0;
          const started: number[] = [];
          const results = await Promise.all(
            specs.map((spec, index) =>
              lanes.submit(`task-${index}`, spec.keys, async () => {
                for (const other of running)
                  assert.ok(!specs[other]?.keys.some((key) => spec.keys.includes(key)), `tasks ${other} and ${index} share a key`);
                running.add(index);
                started.push(index);
                mostAtOnce = Math.max(mostAtOnce, running.size);
                await sleep(spec.milliseconds);
                running.delete(index);
                return index;
              }),
            ),
          );
          assert.deepEqual(
            results,
            specs.map((_, index) => index),
          );
          assert.ok(mostAtOnce <= lanesMax);
          for (const key of ['a', 'b', 'c', 'd', 'e', 'f']) {
            const order = started.filter((index) => (specs[index]?.keys as string[] | undefined)?.includes(key));
            assert.deepEqual(
              order,
              [...order].sort((x, y) => x - y),
              `key ${key} in submission order`,
            );
          }
          assert.deepEqual(lanes.ids(), []);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('runs tasks of different keys side by side', async () => {
    const lanes = new OrderedLanes<void>(4);
    let atOnce = 0;
    let most = 0;
    const task = async () => {
      atOnce += 1;
      most = Math.max(most, atOnce);
      await sleep(20);
      atOnce -= 1;
    };
    await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((key) => lanes.submit(key, [key], task)));
    assert.equal(most, 4);
  });

  it('does not run an id twice while it is in progress, and passes a failure to its caller only', async () => {
    const lanes = new OrderedLanes<string>(2);
    let runs = 0;
    const slow = () => sleep(10).then(() => `run ${(runs += 1)}`);
    const [first, second] = await Promise.all([lanes.submit('x', ['k'], slow), lanes.submit('x', ['k'], slow)]);
    assert.equal(first, 'run 1');
    assert.equal(second, 'run 1');
    await assert.rejects(
      lanes.submit('y', ['k'], () => Promise.reject(new Error('broken'))),
      /broken/,
    );
    assert.equal(await lanes.submit('z', ['k'], async () => 'after'), 'after', 'a failure frees its keys');
  });

  it('tells when the waiting tasks are few enough to read more', async () => {
    const lanes = new OrderedLanes<void>(1);
    const done = Array.from({ length: 5 }, (_, index) => lanes.submit(`t${index}`, [], () => sleep(5)));
    assert.equal(lanes.waitingCount, 4);
    await lanes.whenWaitingAtMost(1);
    assert.ok(lanes.waitingCount <= 1);
    await Promise.all(done);
  });
});
