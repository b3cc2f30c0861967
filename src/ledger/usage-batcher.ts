import type { UsageInput } from './commands.js';
import type { Actor, Ledger, Outcome } from './ledger.js';

/**
 * Group commit for usage. Spends that arrive while earlier ones are being written wait and go
 * together in the next batch: one transaction (tally_usage_batch), one commit and one WAL flush
 * for many spends, so a hot account is not limited to one fsync per spend. With nothing in
 * flight a spend goes at once, so a quiet system adds no latency.
 *
 * An account is in one batch at a time: its spends that arrive while a batch holding it is
 * written wait for the next one. Batches in flight then never wait on each other's account
 * locks, and a hot account's spends gather into one big batch per commit instead of being
 * spread over every batch in flight (each paying its own wait for the lock and its own commit).
 *
 * Each spend keeps its own semantics inside the batch (its key, its 402, its replay); answers
 * are given only after the batch commits. If the batch transaction itself fails, each spend of
 * it is retried alone, so one broken spend cannot fail the others.
 */
export const batchSizeMax = 256;
/** Spends that must wait before a second batch starts beside one in flight (half of the bench's 64 connections). */
export const gatherBeforeAnotherBatch = 32;

interface Pending {
  accountId: string;
  input: UsageInput;
  actor: Actor;
  resolve: (outcome: Outcome) => void;
  reject: (error: unknown) => void;
}

export class UsageBatcher {
  private queue: Pending[] = [];
  private inFlight = 0;
  /** Accounts in a batch being written. */
  private readonly busy = new Set<string>();
  /** Batches written whose answers are not given yet. */
  private answering = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly ledger: Ledger,
    /** Batches written at once; keep it below the pool size so other calls get connections. */
    private readonly concurrentBatchesMax: number,
    /** Told the size of each batch as it is written (a metric). */
    private readonly observeBatch: (spends: number) => void = () => undefined,
  ) {}

  /** Resolves once no spend waits or is being written (answers given). */
  async idle(): Promise<void> {
    while (this.queue.length > 0 || this.inFlight > 0 || this.answering > 0) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
  }

  spend(accountId: string, input: UsageInput, actor: Actor): Promise<Outcome> {
    return new Promise((resolve, reject) => {
      this.queue.push({ accountId, input, actor, resolve, reject });
      this.drain();
    });
  }

  private drain(): void {
    while (this.inFlight < this.concurrentBatchesMax && this.queue.length > 0) {
      // A batch in flight takes everything that waits when it ends; another one starts beside
      // it only when enough spends wait to be worth a transaction of their own. Without this,
      // each spend that arrives while a slot is free goes alone, and a busy server writes
      // mostly batches of one (two thirds of them, measured over 10,000 accounts).
      if (this.inFlight > 0 && this.queue.length < gatherBeforeAnotherBatch) return;
      const batch: Pending[] = [];
      const waiting: Pending[] = [];
      for (const pending of this.queue) {
        if (batch.length < batchSizeMax && !this.busy.has(pending.accountId)) batch.push(pending);
        else waiting.push(pending);
      }
      if (batch.length === 0) return;
      this.queue = waiting;
      const accounts = new Set(batch.map((pending) => pending.accountId));
      for (const account of accounts) this.busy.add(account);
      this.inFlight += 1;
      void this.write(batch).then((answer) => {
        for (const account of accounts) this.busy.delete(account);
        this.inFlight -= 1;
        // The next batch goes to the database first; the answers of this one are written while
        // it runs (after the calls that send it, which the event loop finishes first).
        this.drain();
        this.answering += 1;
        setImmediate(() => {
          answer();
          this.answering -= 1;
          if (this.queue.length === 0 && this.inFlight === 0 && this.answering === 0) {
            for (const wake of this.idleWaiters.splice(0)) wake();
          }
        });
      });
    }
  }

  /** Writes the batch; answers the function that gives each spend its outcome. Never rejects. */
  private async write(batch: Pending[]): Promise<() => void> {
    this.observeBatch(batch.length);
    if (batch.length === 1) {
      const [only] = batch as [Pending];
      const [settled] = (await Promise.allSettled([this.ledger.usage(only.accountId, only.input, only.actor)])) as [
        PromiseSettledResult<Outcome>,
      ];
      return () => settle(only, settled);
    }
    let outcomes: Outcome[];
    try {
      outcomes = await this.ledger.usageBatch(
        batch.map((pending) => ({ ...pending.input, account_id: pending.accountId })),
        batch.map((pending) => pending.actor),
      );
    } catch (batchError) {
      // The batch rolled back as a whole (batchError is what broke it); apply each spend alone,
      // so that only a spend that fails by itself answers with an error.
      void batchError;
      const alone = await Promise.allSettled(batch.map((pending) => this.ledger.usage(pending.accountId, pending.input, pending.actor)));
      return () => batch.forEach((pending, index) => settle(pending, alone[index] as PromiseSettledResult<Outcome>));
    }
    return () => batch.forEach((pending, index) => pending.resolve(outcomes[index] as Outcome));
  }
}

function settle(pending: Pending, result: PromiseSettledResult<Outcome>): void {
  if (result.status === 'fulfilled') pending.resolve(result.value);
  else pending.reject(result.reason);
}
