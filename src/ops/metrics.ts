import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Database } from '../db/database.js';

/**
 * The process's own metrics (CPU, memory, event loop, GC), made once per process. prom-client
 * watches GC and the event loop from observers that are never let go, and they keep their
 * registry alive: made per Metrics, every Tally built in one process (tests, the simulator)
 * would stay in memory with its database pool.
 */
let processRegistry: Registry | undefined;
function processMetrics(): Registry {
  if (processRegistry === undefined) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry, prefix: 'tally_process_' });
  }
  return processRegistry;
}

/**
 * Prometheus metrics, one registry per process (each Tally process serves its own /metrics):
 * the process's metrics and Tally's own.
 */
export class Metrics {
  private readonly own = new Registry();
  readonly registry: Registry;
  readonly requests = new Counter({
    name: 'tally_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.own],
  });
  readonly requestSeconds = new Histogram({
    name: 'tally_http_request_duration_seconds',
    help: 'HTTP request latency by route',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.own],
  });
  readonly ledgerOperations = new Counter({
    name: 'tally_ledger_operations_total',
    help: 'Ledger operations by kind and outcome status',
    labelNames: ['operation', 'status'] as const,
    registers: [this.own],
  });
  readonly ledgerCredits = new Counter({
    name: 'tally_ledger_credits_total',
    help: 'Credits moved by accepted ledger operations, by kind',
    labelNames: ['operation'] as const,
    registers: [this.own],
  });

  readonly usageBatchSpends = new Histogram({
    name: 'tally_usage_batch_spends',
    help: 'Spends written together in one usage transaction (group commit)',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256],
    registers: [this.own],
  });

  readonly webhookEvents = new Counter({
    name: 'tally_webhook_events_total',
    help: 'Webhook events applied by the worker, by type and outcome',
    labelNames: ['type', 'outcome'] as const,
    registers: [this.own],
  });
  readonly webhookLagSeconds = new Histogram({
    name: 'tally_webhook_lag_seconds',
    help: 'Seconds from receiving a webhook event to applying it',
    buckets: [0.01, 0.05, 0.1, 0.5, 1, 5, 30, 60, 300, 3600, 86400],
    registers: [this.own],
  });

  constructor(db: Database, breaker?: () => { state: string; failures: number }) {
    new Gauge({
      name: 'tally_db_pool_connections',
      help: 'Database pool connections by state',
      labelNames: ['state'] as const,
      registers: [this.own],
      collect() {
        this.set({ state: 'total' }, db.pool.totalCount);
        this.set({ state: 'idle' }, db.pool.idleCount);
        this.set({ state: 'waiting' }, db.pool.waitingCount);
      },
    });
    new Gauge({
      name: 'tally_stripe_breaker_open',
      help: 'The Stripe circuit breaker: 1 open or isolated, 0.5 half open, 0 closed',
      registers: [this.own],
      collect() {
        const state = breaker?.().state ?? 'closed';
        this.set(state === 'closed' ? 0 : state === 'half_open' ? 0.5 : 1);
      },
    });
    new Gauge({
      name: 'tally_credits_granted',
      help: 'Credits granted so far, by grant source (all processes, from the database)',
      labelNames: ['source'] as const,
      registers: [this.own],
      // Summed as float8: Prometheus values are floats anyway, and a sum past the safe integer
      // range must not fail the whole scrape.
      async collect() {
        const { rows } = await db.query<{ source: string; credits: number; grants: number }>(
          'select source, sum(amount)::float8 as credits, count(*)::bigint as grants from grants group by source',
        );
        this.reset();
        for (const row of rows) this.set({ source: row.source }, row.credits);
      },
    });
    new Gauge({
      name: 'tally_alerts_last_day',
      help: 'Alerts raised in the last 24 hours, by kind and severity',
      labelNames: ['kind', 'severity'] as const,
      registers: [this.own],
      async collect() {
        const { rows } = await db.query<{ kind: string; severity: string; count: number }>(
          `select kind, severity, sum(count)::int as count from alerts where last_at > now() - interval '1 day' group by kind, severity`,
        );
        this.reset();
        for (const row of rows) this.set({ kind: row.kind, severity: row.severity }, row.count);
      },
    });
    this.registry = Registry.merge([processMetrics(), this.own]);
  }

  countOperation(operation: string, status: number, credits: number): void {
    this.ledgerOperations.inc({ operation, status: String(status) });
    if (status < 300) this.ledgerCredits.inc({ operation }, credits);
  }
}
