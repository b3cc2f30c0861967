/**
 * Group commit: writes that arrive while earlier ones are being committed wait and go together
 * in the next batch, one transaction and one WAL flush for many. With fewer than
 * `concurrentBatchesMax` batches in flight a write goes at once, so a quiet system adds no
 * latency; under load, batches form by themselves from what queued meanwhile.
 *
 * Each caller's promise settles only after its batch committed (or failed). When a batch fails
 * as a whole, each of its members is written again alone, so that only a member that fails by
 * itself answers with an error. This is the scheduling of the usage batcher
 * (ledger/usage-batcher.ts), kept generic for other writers.
 */
export interface GroupCommitWriter<Item, Result> {
  /** Writes every item in one transaction; answers one result per item, in order. */
  writeBatch(items: Item[]): Promise<Result[]>;
  /** Writes one item alone: a batch of one, and each member again after a failed batch. */
  writeOne(item: Item): Promise<Result>;
}

export interface GroupCommitOptions {
  batchSizeMax: number;
  /** Batches written at once; keep it below the pool size so other work gets connections. */
  concurrentBatchesMax: number;
  /** Told why a batch failed as a whole, before its members are written again one by one. */
  onBatchError?: ((error: unknown, batchSize: number) => void) | undefined;
}

interface Queued<Item, Result> {
  item: Item;
  resolve: (result: Result) => void;
  reject: (error: unknown) => void;
}

export class GroupCommit<Item, Result> {
  private queue: Queued<Item, Result>[] = [];
  private inFlight = 0;

  constructor(
    private readonly writer: GroupCommitWriter<Item, Result>,
    private readonly options: GroupCommitOptions,
  ) {
    if (!(options.batchSizeMax >= 1 && options.concurrentBatchesMax >= 1))
      throw new RangeError('group commit needs batchSizeMax and concurrentBatchesMax of at least 1');
  }

  /** Resolves with the item's result once the batch that carried it committed. */
  submit(item: Item): Promise<Result> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      this.startBatches();
    });
  }

  /** Items waiting for a batch to free up (tests watch a group form). */
  get queuedCount(): number {
    return this.queue.length;
  }

  private startBatches(): void {
    while (this.inFlight < this.options.concurrentBatchesMax && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.options.batchSizeMax);
      this.inFlight += 1;
      void this.write(batch).finally(() => {
        this.inFlight -= 1;
        this.startBatches();
      });
    }
  }

  private async write(batch: Queued<Item, Result>[]): Promise<void> {
    if (batch.length === 1) {
      const [only] = batch as [Queued<Item, Result>];
      await this.writer.writeOne(only.item).then(only.resolve, only.reject);
      return;
    }
    let results: Result[];
    try {
      results = await this.writer.writeBatch(batch.map((queued) => queued.item));
    } catch (batchError) {
      // The batch rolled back as a whole: write each member alone, so that only a member that
      // fails by itself answers with an error.
      this.options.onBatchError?.(batchError, batch.length);
      await Promise.all(batch.map((queued) => this.writer.writeOne(queued.item).then(queued.resolve, queued.reject)));
      return;
    }
    if (results.length !== batch.length) {
      // A broken writer, not an operating error: every member hears of it rather than waiting forever.
      const broken = new Error(`group commit: the writer answered ${results.length} results for a batch of ${batch.length}`);
      for (const queued of batch) queued.reject(broken);
      return;
    }
    batch.forEach((queued, index) => queued.resolve(results[index] as Result));
  }
}
