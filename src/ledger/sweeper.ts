import type { Logger } from 'pino';
import { Periodic } from '../ops/periodic.js';
import type { Ledger } from './ledger.js';

/**
 * The background sweep: releases holds and expires grants that are past due, so entries record
 * them even for accounts nobody touches. Safe with any number of processes: each account is
 * settled in its own transaction under its row lock, and a second sweeper finds nothing to do.
 * Reads and spends never wait for it: they settle the account themselves.
 */
export const sweepAccountCountMax = 500;

export class Sweeper {
  private readonly periodic: Periodic;

  constructor(
    private readonly ledger: Ledger,
    private readonly logger: Logger,
    intervalSeconds: number,
  ) {
    this.periodic = new Periodic(intervalSeconds * 1000, () => this.sweep());
  }

  start(): void {
    this.periodic.start();
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
    await this.periodic.stop();
  }
}
