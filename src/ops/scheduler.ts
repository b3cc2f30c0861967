import type { Logger } from 'pino';
import type { Catalog } from '../billing/catalog.js';
import type { Database } from '../db/database.js';
import { TallyError } from '../errors.js';
import type { StripeGateway } from '../stripe/gateway.js';
import { deliverAlerts, type DeliveryOptions } from './alert-sinks.js';
import { Periodic } from '../timing/periodic.js';
import { reconcileIfDue } from './reconcile.js';
import { checkWebhookFailureRate } from './rules.js';

/**
 * The operations loop of a process: alert rules, alert delivery, and the scheduled
 * reconciliation (daily by default; the advisory lock keeps it to one run at a time, and a run
 * starts only when the last one, from any process, is older than the interval).
 */
export interface OperationsOptions {
  intervalSeconds: number;
  reconcileIntervalHours: number;
  delivery: DeliveryOptions;
}

export class OperationsScheduler {
  private readonly periodic: Periodic;

  constructor(
    private readonly db: Database,
    private readonly catalog: Catalog,
    private readonly gateway: StripeGateway | undefined,
    private readonly logger: Logger,
    private readonly options: OperationsOptions,
  ) {
    this.periodic = new Periodic(options.intervalSeconds * 1000, () => this.tick());
  }

  start(): void {
    this.periodic.start();
  }

  async stop(): Promise<void> {
    await this.periodic.stop();
  }

  async tick(): Promise<void> {
    const steps: [string, () => Promise<unknown>][] = [
      ['webhook rule', () => checkWebhookFailureRate(this.db)],
      ['scheduled reconciliation', () => this.reconcileIfDue()],
      ['alert delivery', () => deliverAlerts(this.db, this.options.delivery)],
    ];
    for (const [name, step] of steps) {
      try {
        await step();
      } catch (error) {
        this.logger.error({ err: error }, `${name} failed; next tick retries`);
      }
    }
  }

  async reconcileIfDue(): Promise<boolean> {
    if (this.options.reconcileIntervalHours <= 0) return false;
    let report: Awaited<ReturnType<typeof reconcileIfDue>>;
    try {
      const options = { trigger: 'schedule' as const, stripe: this.gateway !== undefined, gateway: this.gateway, catalog: this.catalog };
      report = await reconcileIfDue(this.db, options, this.options.reconcileIntervalHours);
    } catch (error) {
      // Another process is running it at this moment: nothing to do here.
      if (error instanceof TallyError && error.code === 'reconciliation_running') return false;
      // The run is recorded as failed and alerted; the next is due after a backoff, not on the
      // next tick (see reconcileIfDue).
      this.logger.error({ err: error }, 'scheduled reconciliation failed; it is retried after a backoff');
      return false;
    }
    if (report === undefined) return false;
    this.logger.info({ run: report.run_id, findings: report.finding_count }, 'scheduled reconciliation done');
    return true;
  }
}
