import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, it } from 'node:test';
import { GroupCommit } from '../../src/db/group-commit.js';

describe('GroupCommit', () => {
  it('writes what queued behind the batches in flight as one batch, and each member again alone when a batch fails', async () => {
    const batches: string[][] = [];
    const group = new GroupCommit<string, string>(
      {
        async writeBatch(items) {
          batches.push(items);
          await sleep(10);
          if (items.includes('bad')) throw new Error('the batch broke');
          return items.map((item) => `${item}!`);
        },
        async writeOne(item) {
          batches.push([item]);
          await sleep(10);
          if (item === 'bad') throw new Error('bad alone');
          return `${item}!`;
        },
      },
      { batchSizeMax: 10, concurrentBatchesMax: 1 },
    );
    const first = group.submit('first');
    const together = ['a', 'b', 'c'].map((item) => group.submit(item));
    assert.equal(group.queuedCount, 3);
    assert.deepEqual(await Promise.all([first, ...together]), ['first!', 'a!', 'b!', 'c!']);
    assert.deepEqual(batches, [['first'], ['a', 'b', 'c']]);
    batches.length = 0;
    const blocker = group.submit('blocker');
    const mixed = ['good', 'bad', 'fine'].map((item) =>
      group.submit(item).then(
        (value) => ({ value }),
        (error: Error) => ({ error: error.message }),
      ),
    );
    await blocker;
    assert.deepEqual(await Promise.all(mixed), [{ value: 'good!' }, { error: 'bad alone' }, { value: 'fine!' }]);
    assert.deepEqual(batches.slice(0, 2), [['blocker'], ['good', 'bad', 'fine']]);
  });
});
