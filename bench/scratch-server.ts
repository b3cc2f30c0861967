/**
 * The PostgreSQL server a bench script uses: the one `BENCH_DATABASE_URL` (or the given URL)
 * names, else a fresh embedded cluster in a scratch folder, removed by `stop()`.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startEmbeddedDatabase } from '../src/db/embedded.js';

export interface BenchServerDatabase {
  serverUrl: string;
  stop(): Promise<void>;
}

export async function openBenchPostgres(tag: string, given = process.env.BENCH_DATABASE_URL): Promise<BenchServerDatabase> {
  if (given !== undefined && given !== '') return { serverUrl: given, stop: async () => undefined };
  const scratch = mkdtempSync(join(tmpdir(), `tally-bench-${tag}-`));
  const embedded = await startEmbeddedDatabase({ dataDirectory: scratch, databaseName: 'postgres' });
  return {
    serverUrl: embedded.url,
    async stop() {
      await embedded.stop();
      rmSync(scratch, { recursive: true, force: true });
    },
  };
}
