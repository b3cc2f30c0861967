import type { Logger } from 'pino';
import type { AlertInput } from '../ports/alerts.js';
import { Periodic } from '../timing/periodic.js';
import type { Ledger } from './ledger.js';

/**
 * The background sweep: releases holds and expires grants that are past due, so entries record
 * them even for accounts nobody touches. Safe with any number of processes: each account is
 * settled in its own transaction under its row lock, and a second sweeper finds nothing to do.
 * Reads and spends never wait for it: they settle the account themselves.
 *
 * One account that cannot be settled never stops the others: the sweep moves on past it. After
 * `attemptCountMax` failures in a row the account is parked (tried again once per
 * `parkSeconds`, not on every pass) and an alert names it, so an operator looks at it.
 */
export const sweepAccountCountMax = 500;
export const sweepPageCountMax = 100;

export interface SweeperLimits {
  attemptCountMax: number;
  parkSeconds: number;
}

export const defaultSweeperLimits: SweeperLimits = { attemptCountMax: 5, parkSeconds: 3600 };

/** What the sweep needs of the ledger. */
export type SettlingLedger = Pick<Ledger, 'dueAccounts' | 'settleAccount'>;

/** Raises an alert (the alert port's raise, on the pool); the sweeper does not reach the database itself. */
export type RaiseAlert = (alert: AlertInput) => Promise<void>;

interface Failure {
  attempts: number;
  parkedUntilMilliseconds: number;
}

export class Sweeper {
  private readonly periodic: Periodic;
  /** Accounts whose last settles failed. Kept per process: a restart gives each a fresh count. */
  private readonly failures = new Map<string, Failure>();

  constructor(
    private readonly ledger: SettlingLedger,
    private readonly logger: Logger,
    intervalSeconds: number,
    private readonly raiseAlert: RaiseAlert,
    private readonly limits: SweeperLimits = defaultSweeperLimits,
  ) {
    this.periodic = new Periodic(intervalSeconds * 1000, () => this.sweep());
  }

  start(): void {
    this.periodic.start();
  }

  async sweep(): Promise<void> {
    const skipped = this.parkedAccounts();
    // Keep going while full pages come back, so a backlog clears within one interval; an
    // account that failed in this pass is skipped in the next pages, so the pass ends.
    for (let page = 0; page < sweepPageCountMax; page += 1) {
      let due: string[];
      try {
        due = await this.ledger.dueAccounts(sweepAccountCountMax, skipped);
      } catch (error) {
        this.logger.error({ err: error }, 'could not read the accounts due for a sweep; retrying next interval');
        return;
      }
      for (const accountId of due) {
        if (!(await this.settle(accountId))) skipped.push(accountId);
      }
      if (due.length < sweepAccountCountMax) return;
    }
  }

  /** Stops the timer and waits for a sweep in progress to finish. */
  async stop(): Promise<void> {
    await this.periodic.stop();
  }

  private parkedAccounts(): string[] {
    const now = Date.now();
    return [...this.failures].filter(([, failure]) => failure.parkedUntilMilliseconds > now).map(([accountId]) => accountId);
  }

  /** Settles one account; answers whether it worked. A failure is counted, never thrown. */
  private async settle(accountId: string): Promise<boolean> {
    try {
      await this.ledger.settleAccount(accountId);
      this.failures.delete(accountId);
      return true;
    } catch (error) {
      await this.recordFailure(accountId, error);
      return false;
    }
  }

  private async recordFailure(accountId: string, error: unknown): Promise<void> {
    const attempts = (this.failures.get(accountId)?.attempts ?? 0) + 1;
    const parked = attempts >= this.limits.attemptCountMax;
    this.failures.set(accountId, { attempts, parkedUntilMilliseconds: parked ? Date.now() + this.limits.parkSeconds * 1000 : 0 });
    this.logger.error({ err: error, accountId, attempts }, 'settling an account failed; the sweep moves on to the next');
    if (!parked) return;
    const message = error instanceof Error ? error.message : String(error);
    try {
      await this.raiseAlert({
        kind: 'sweep_failed',
        key: `sweep:${accountId}`,
        severity: 'critical',
        message: `account ${accountId} could not be settled (due holds and expiries) after ${attempts} attempts: ${message}`,
        details: { attempts, error: message, retry_after_seconds: this.limits.parkSeconds },
        accountId,
      });
    } catch (alertError) {
      this.logger.error({ err: alertError, accountId }, 'could not record the alert of an account the sweep cannot settle');
    }
  }
}
