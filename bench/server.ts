/**
 * The server under load, in its own process: the real `tally start` on a given database, so
 * the load generator (autocannon, in the bench's process) never shares a process with it, and
 * its resident memory can be read from /proc while the load runs.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

export const benchAppKey = 'bench-app-key-0123456789';
export const benchAdminKey = 'bench-admin-key-0123456789';
export const benchWebhookSecret = 'whsec_bench_0123456789';

export interface BenchServer {
  url: string;
  pid: number;
  /** The largest resident set size seen since the last call, in MiB (sampled every 100 ms). */
  takePeakRssMiB(): number;
  stop(): Promise<void>;
}

export async function startBenchServer(
  databaseUrl: string,
  extraEnvironment: Record<string, string> = {},
  nodeArguments: string[] = [],
): Promise<BenchServer> {
  const port = await freePort();
  const child = spawn(process.execPath, [...nodeArguments, 'bin/tally.js', 'start'], {
    env: {
      ...process.env,
      DATABASE_URL: databaseUrl,
      PORT: String(port),
      HOST: '127.0.0.1',
      TALLY_API_KEY: benchAppKey,
      TALLY_ADMIN_KEY: benchAdminKey,
      STRIPE_WEBHOOK_SECRET: benchWebhookSecret,
      TALLY_DB_POOL_SIZE: '40',
      TALLY_RECONCILE_INTERVAL_HOURS: '0',
      LOG_LEVEL: 'warn',
      ...extraEnvironment,
    },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  const url = `http://127.0.0.1:${port}`;
  await waitUntilReady(url, child);
  let peak = 0;
  const sampler = setInterval(() => {
    peak = Math.max(peak, residentMiB(child.pid!));
  }, 100);
  sampler.unref();
  return {
    url,
    pid: child.pid!,
    takePeakRssMiB() {
      const seen = Math.max(peak, residentMiB(child.pid!));
      peak = 0;
      return seen;
    },
    async stop() {
      clearInterval(sampler);
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

function residentMiB(pid: number): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
    return kib / 1024;
  } catch {
    return 0;
  }
}

async function waitUntilReady(url: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + 60_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the bench server exited with ${child.exitCode} before it was ready`);
    const ready = await fetch(`${url}/readyz`).then(
      (response) => response.ok,
      () => false,
    );
    if (ready) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill('SIGKILL');
  throw new Error('the bench server was not ready within 60 s');
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const address = probe.address();
      probe.close(() => (typeof address === 'object' && address !== null ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}
