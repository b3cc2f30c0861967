import type { Logger } from 'pino';
import type { Ledger } from './ledger.js';

/**
 * The background sweep: releases holds and expires grants that are past due, so entries record
 * them even for accounts nobody touches. Safe with any number of processes: each account is
 * settled in its own transaction under its row lock, and a second sweeper finds nothing to do.
 * Reads and spends never wait for it: they settle the account themselves.
 */
export const sweepAccountCountMax = 500;

export class Sweeper {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(
    private readonly ledger: Ledger,
    private readonly logger: Logger,
    private readonly intervalSeconds: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.running === undefined) this.running = this.sweep().finally(() => (this.running = undefined));
    }, this.intervalSeconds * 1000);
    this.timer.unref();
  }

  async sweep(): Promise<void> {
    try {
      // Keep going while full batches come back, so a backlog clears within one interval.
      while ((await this.ledger.settleDue(sweepAccountCountMax)) === sweepAccountCountMax);
    } catch (error) {
      this.logger.error({ err: error }, 'sweep of due holds and expiries failed; retrying next interval');
    }
  }

  /** Stops the timer and waits for a sweep in progress to finish. */
  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}
