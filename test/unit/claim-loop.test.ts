import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { claimLoop, claimLoopTask, type ClaimLoopWork } from '../../src/timing/claim-loop.js';

/** A queue of due items; processing an item may make others due (`unlocks`). */
function queue(items: number[], unlocks: (item: number) => number[] = () => []) {
  const due = [...items];
  const claims: number[][] = [];
  const work: ClaimLoopWork<number> = {
    async claim(batchSizeMax) {
      const batch = due.splice(0, batchSizeMax);
      claims.push(batch);
      return batch;
    },
    async process(batch) {
      for (const item of batch) due.push(...unlocks(item));
    },
  };
  return { work, claims, due };
}

describe('claimLoop', () => {
  it('short-batch: claims full batches until one comes back short, then stops', async () => {
    // Proves that a job whose claim read everything due stops without another query.
    const { work, claims } = queue([1, 2, 3, 4, 5, 6, 7]);
    const run = await claimLoop(work, { batchSizeMax: 3, batchCountMax: 10, until: 'short-batch' });
    assert.deepEqual(claims, [[1, 2, 3], [4, 5, 6], [7]]);
    assert.deepEqual(run, { itemCount: 7, batchCount: 3, stoppedAtBatchCountMax: false });
  });

  it('empty-batch: keeps claiming while processing makes more due, until a claim is empty', async () => {
    // Proves the event delivery case: delivering an account's event lets its next one go.
    const next: Record<number, number[]> = { 1: [2], 2: [3], 10: [11], 11: [12] };
    const { work, claims } = queue([1, 10], (item) => next[item] ?? []);
    const run = await claimLoop(work, { batchSizeMax: 5, batchCountMax: 10, until: 'empty-batch' });
    assert.deepEqual(claims, [[1, 10], [2, 11], [3, 12], []]);
    assert.equal(run.itemCount, 6);
  });

  it('stops at batchCountMax and leaves the rest for the next run', async () => {
    // Proves the bound: a run always ends, however much keeps becoming due.
    const { work, claims, due } = queue([0], (item) => [item + 1]);
    const run = await claimLoop(work, { batchSizeMax: 1, batchCountMax: 4, until: 'empty-batch' });
    assert.equal(claims.length, 4);
    assert.deepEqual(run, { itemCount: 4, batchCount: 4, stoppedAtBatchCountMax: true });
    assert.deepEqual(due, [4], 'what is left waits');
  });

  it('never processes an empty claim', async () => {
    let processed = 0;
    const run = await claimLoop(
      {
        claim: async () => [],
        process: async () => {
          processed += 1;
        },
      },
      { batchSizeMax: 10, batchCountMax: 10, until: 'short-batch' },
    );
    assert.equal(processed, 0);
    assert.deepEqual(run, { itemCount: 0, batchCount: 0, stoppedAtBatchCountMax: false });
  });

  it('ends the run with the error of a failed batch; as a Periodic task it logs it instead', async () => {
    const failing: ClaimLoopWork<number> = {
      claim: async () => [1],
      process: async () => {
        throw new Error('the batch broke');
      },
    };
    const limits = { batchSizeMax: 1, batchCountMax: 10, until: 'empty-batch' } as const;
    await assert.rejects(claimLoop(failing, limits), /the batch broke/);
    const logged: string[] = [];
    await claimLoopTask(
      failing,
      limits,
      { error: (object, message) => logged.push(`${message}: ${(object as { err: Error }).err.message}`) },
      'job failed',
    )();
    assert.deepEqual(logged, ['job failed: the batch broke']);
  });
});
