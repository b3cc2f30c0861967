import pg from 'pg';
import { retrying as retryingWith, type Backoff } from '../timing/backoff.js';
import { DatabaseUnavailableError, isConnectionLoss, isLockTimeout, isRetryable, toDomainError } from './errors.js';

/**
 * The pool and the two ways to use it: one statement (`query`) or one transaction
 * (`withTransaction`). Both retry serialization failures and deadlocks a bounded number of
 * times, so that no client ever sees them, and a lock timeout once.
 */
export interface DatabaseOptions {
  url: string;
  poolSize: number;
  statementTimeoutMilliseconds: number;
  /** How long a statement waits for a row lock (0: no limit but the statement timeout); by default the statement timeout. */
  lockTimeoutMilliseconds?: number;
  applicationName?: string;
  /** Where connection losses are reported (the server's log); by default, a process warning. */
  warn?: (message: string) => void;
}

export const retryCountMax = 8;

/**
 * A statement that waited for a lock past the lock timeout is tried once more (the holder may be
 * about to commit), then answered as database_busy; a statement timeout is not tried again, as
 * the same statement would likely take as long.
 */
export const lockTimeoutRetryCountMax = 1;

/** Racing transactions retry after 2, 4, 8 ... ms, capped, and spread so that they part. */
const transactionBackoff: Backoff = { delaySecondsFirst: 0.002, delaySecondsMax: 0.1, attemptsMax: retryCountMax, jitterRatio: 0.5 };

// bigint columns come back as numbers; every balance is kept a safe integer by CHECK
// constraints, and anything else is a broken invariant rather than a silent rounding.
const int8Parser = (text: string): number => {
  const value = Number(text);
  if (!Number.isSafeInteger(value)) throw new RangeError(`bigint ${text} is beyond the safe integer range`);
  return value;
};
const types = {
  getTypeParser: ((oid: number, format?: string) =>
    oid === pg.types.builtins.INT8 ? int8Parser : pg.types.getTypeParser(oid, format as 'text')) as typeof pg.types.getTypeParser,
};

export class Database {
  readonly pool: pg.Pool;

  constructor(options: DatabaseOptions) {
    this.pool = new pg.Pool({
      connectionString: options.url,
      max: options.poolSize,
      application_name: options.applicationName ?? 'tally',
      options: `-c statement_timeout=${options.statementTimeoutMilliseconds} -c lock_timeout=${options.lockTimeoutMilliseconds ?? options.statementTimeoutMilliseconds}`,
      connectionTimeoutMillis: 10_000,
      types,
    });
    const warn = options.warn ?? ((message: string) => process.emitWarning(message));
    // An idle client losing its server is reported here; the pool replaces it on next use.
    this.pool.on('error', (error) => warn(`database pool: idle connection lost: ${error.message}`));
    // A checked-out client whose connection dies between statements emits 'error' outside any
    // query, and an unheard 'error' would end the process. Heard here, it only makes the next
    // statement on that client fail, which releases it as broken.
    this.pool.on('connect', (client) => {
      client.on('error', (error) => warn(`database pool: connection lost while in use: ${error.message}`));
    });
  }

  async query<Row extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values: unknown[] = []): Promise<pg.QueryResult<Row>> {
    return retrying(async () => {
      const client = await this.connect();
      let broken: Error | undefined;
      try {
        return await client.query<Row>(text, values);
      } catch (error) {
        if (isConnectionLoss(error)) broken = error as Error;
        throw error;
      } finally {
        client.release(broken);
      }
    });
  }

  /**
   * A connection from the pool. When the server cannot give one (it refuses connections, has
   * too many clients, is shutting down, or the pool waited too long), this is a
   * DatabaseUnavailableError: nothing was sent, so the retry loop may try again, and a client
   * finally sees 503 rather than an internal error.
   */
  private async connect(): Promise<pg.PoolClient> {
    try {
      return await this.pool.connect();
    } catch (error) {
      throw new DatabaseUnavailableError(error);
    }
  }

  /** Calls a SQL function that returns one jsonb value, in one round trip. */
  async callJson<T>(text: string, values: unknown[]): Promise<T> {
    const result = await this.query<{ result: T }>(text, values);
    const row = result.rows[0];
    if (row === undefined) throw new Error(`no row from ${text}`);
    return row.result;
  }

  async withTransaction<T>(work: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    return retrying(async () => {
      const client = await this.connect();
      let broken: Error | undefined;
      try {
        await client.query('begin').catch((error: unknown) => {
          // A connection that died in the pool fails at `begin`, before any work: try another.
          if (isConnectionLoss(error)) throw new DatabaseUnavailableError(error, true);
          throw error;
        });
        const value = await work(client);
        await client.query('commit');
        return value;
      } catch (error) {
        // A failed rollback means a broken connection: the pool must not hand it out again.
        await client.query('rollback').catch((rollbackError: unknown) => {
          broken = rollbackError as Error;
        });
        throw error;
      } finally {
        client.release(broken);
      }
    });
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

async function retrying<T>(operation: () => Promise<T>): Promise<T> {
  let lockTimeoutCount = 0;
  const retryable = (error: unknown): boolean => {
    if (!isLockTimeout(error)) return isRetryable(error);
    lockTimeoutCount += 1;
    return lockTimeoutCount <= lockTimeoutRetryCountMax;
  };
  try {
    return await retryingWith(operation, transactionBackoff, retryable);
  } catch (error) {
    throw toDomainError(error);
  }
}
