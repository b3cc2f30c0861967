import type pg from 'pg';

/**
 * The alert port: how the ledger, billing, the webhook worker and event delivery raise alerts
 * without importing ops/, which sits above them and reads their tables. ops/ implements it
 * (`alertPort` in ops/rules.ts) and assembly (app.ts, the CLI) hands it in, so the money code
 * never depends on the operations code, and a test can hand in its own.
 */
export interface AlertInput {
  kind: string;
  key: string;
  severity: 'info' | 'warning' | 'critical';
  message: string;
  details?: Record<string, unknown>;
  accountId?: string | undefined;
}

/** Where SQL runs: the pool, or the client of a transaction in progress. */
export type Queryable = Pick<pg.ClientBase, 'query'>;

/** A grant just made, as the grant rule looks at it. */
export interface NewGrant {
  grantId: number;
  accountId: string;
  amount: number;
  source: string;
}

export interface Alerts {
  /** Raises an alert through `client`: inside a transaction, the alert commits with what raised it. */
  raise(client: Queryable, alert: AlertInput): Promise<void>;
  /** The grant rule, on a grant made through `client`: answers whether it raised an alert. */
  checkGrant(client: Queryable, grant: NewGrant): Promise<boolean>;
}
