/**
 * The loop of every background job: claim a bounded batch of due work, process it, and repeat
 * until nothing more is due, or until a bounded number of batches was taken, so that a run
 * always ends and what is left waits for the next one. How a batch is claimed (FOR UPDATE SKIP
 * LOCKED, a lease) and what processing means are the job's own.
 */
export interface ClaimLoopLimits {
  /** The most items one claim takes. */
  batchSizeMax: number;
  /** The most batches one run takes. */
  batchCountMax: number;
  /**
   * When a run is done. 'short-batch': once a claim takes less than a full batch, everything due
   * was claimed. 'empty-batch': only once a claim takes nothing, for jobs where processing a
   * batch makes more due (a delivered event lets the account's next event go).
   */
  until: 'short-batch' | 'empty-batch';
}

export interface ClaimLoopWork<Item> {
  /** Claims at most `batchSizeMax` items. */
  claim(batchSizeMax: number): Promise<readonly Item[]>;
  /** Processes what one claim took; an error ends the run (the job logs it and tries later). */
  process(batch: readonly Item[]): Promise<void>;
}

export interface ClaimLoopRun {
  /** Items claimed and processed. */
  itemCount: number;
  batchCount: number;
  /** The run stopped at batchCountMax while more may be due. */
  stoppedAtBatchCountMax: boolean;
}

export async function claimLoop<Item>(work: ClaimLoopWork<Item>, limits: ClaimLoopLimits): Promise<ClaimLoopRun> {
  let itemCount = 0;
  for (let batchCount = 0; batchCount < limits.batchCountMax; ) {
    const batch = await work.claim(limits.batchSizeMax);
    if (batch.length === 0) return { itemCount, batchCount, stoppedAtBatchCountMax: false };
    batchCount += 1;
    itemCount += batch.length;
    await work.process(batch);
    if (limits.until === 'short-batch' && batch.length < limits.batchSizeMax)
      return { itemCount, batchCount, stoppedAtBatchCountMax: false };
  }
  return { itemCount, batchCount: limits.batchCountMax, stoppedAtBatchCountMax: true };
}

/**
 * A task for Periodic: one claim loop, its failure logged (the next tick tries again), since a
 * Periodic task handles its own errors.
 */
export function claimLoopTask<Item>(
  work: ClaimLoopWork<Item>,
  limits: ClaimLoopLimits,
  logger: { error(object: object, message: string): void },
  failure: string,
): () => Promise<void> {
  return async () => {
    try {
      await claimLoop(work, limits);
    } catch (error) {
      logger.error({ err: error }, failure);
    }
  };
}
