import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Database } from '../db/database.js';

/**
 * Prometheus metrics, one registry per process (each Tally process serves its own /metrics).
 */
export class Metrics {
  readonly registry = new Registry();
  readonly requests = new Counter({
    name: 'tally_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly requestSeconds = new Histogram({
    name: 'tally_http_request_duration_seconds',
    help: 'HTTP request latency by route',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly ledgerOperations = new Counter({
    name: 'tally_ledger_operations_total',
    help: 'Ledger operations by kind and outcome status',
    labelNames: ['operation', 'status'] as const,
    registers: [this.registry],
  });
  readonly ledgerCredits = new Counter({
    name: 'tally_ledger_credits_total',
    help: 'Credits moved by accepted ledger operations, by kind',
    labelNames: ['operation'] as const,
    registers: [this.registry],
  });

  constructor(db: Database) {
    collectDefaultMetrics({ register: this.registry, prefix: 'tally_process_' });
    new Gauge({
      name: 'tally_db_pool_connections',
      help: 'Database pool connections by state',
      labelNames: ['state'] as const,
      registers: [this.registry],
      collect() {
        this.set({ state: 'total' }, db.pool.totalCount);
        this.set({ state: 'idle' }, db.pool.idleCount);
        this.set({ state: 'waiting' }, db.pool.waitingCount);
      },
    });
  }

  countOperation(operation: string, status: number, credits: number): void {
    this.ledgerOperations.inc({ operation, status: String(status) });
    if (status < 300) this.ledgerCredits.inc({ operation }, credits);
  }
}
