import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { freePort } from '../../src/db/embedded.js';

// Proves the zero-set-up promise: `tally start` (the compiled build in dist/) with no
// DATABASE_URL starts an embedded PostgreSQL in the data folder, prints where it listens and its
// generated keys (once: the next start says where they are kept), serves the API and the
// dashboard's files, stops cleanly on SIGTERM and SIGINT, and reuses its data and keys on the
// next start.
const dataDirectory = mkdtempSync(join(tmpdir(), 'tally-start-'));
after(() => rmSync(dataDirectory, { recursive: true, force: true }));

interface Started {
  child: ChildProcess;
  output: () => string;
}

async function startTally(port: number, environment: Record<string, string> = {}): Promise<Started> {
  const child = spawn(process.execPath, ['bin/tally.js', 'start'], {
    env: { PATH: process.env.PATH, TALLY_DATA_DIR: dataDirectory, PORT: String(port), LOG_LEVEL: 'warn', ...environment },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk) => (output += chunk));
  child.stderr?.on('data', (chunk) => (output += chunk));
  const deadline = Date.now() + 60_000;
  while (!output.includes('listening on')) {
    if (child.exitCode !== null) throw new Error(`tally exited ${child.exitCode}: ${output}`);
    if (Date.now() > deadline) throw new Error(`tally did not start: ${output}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { child, output: () => output };
}

async function stop(started: Started, signal: NodeJS.Signals): Promise<number | null> {
  const exited = new Promise<number | null>((resolve) => started.child.on('exit', (code) => resolve(code)));
  started.child.kill(signal);
  return exited;
}

const keyFrom = (output: string, name: string): string => {
  const match = new RegExp(`${name} key:\\s+(\\S+)`).exec(output);
  assert.ok(match?.[1], `${name} key printed`);
  return match[1];
};

it('starts on an embedded database, serves, stops cleanly, and restarts on the same data', async () => {
  const port = await freePort();
  const first = await startTally(port);
  assert.match(first.output(), new RegExp(`listening on http://127\\.0\\.0\\.1:${port}`));
  assert.match(first.output(), /Keys generated for/);
  const appKey = keyFrom(first.output(), 'app');
  const adminKey = keyFrom(first.output(), 'admin');
  const call = async (method: string, path: string, key: string, body?: unknown) => {
    const response = await fetch(`http://127.0.0.1:${port}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  assert.equal((await call('PUT', '/v1/accounts/e2e', appKey, {})).status, 200);
  assert.equal(
    (await call('POST', '/v1/accounts/e2e/grants', adminKey, { amount: 10, source: 'promo', reason: 'e2e', idempotency_key: 'e2e-g' }))
      .status,
    201,
  );
  assert.equal((await call('POST', '/v1/accounts/e2e/usage', appKey, { amount: 3, idempotency_key: 'e2e-u' })).status, 200);
  // The process runs the compiled dist/: the dashboard's browser files were copied beside it.
  const script = await fetch(`http://127.0.0.1:${port}/dashboard/app.js`);
  assert.equal(script.status, 200, "the dashboard's own scripts are served");
  assert.match(await script.text(), /import/);
  assert.equal(await stop(first, 'SIGTERM'), 0, 'exits 0 on SIGTERM');

  const second = await startTally(port);
  assert.match(second.output(), new RegExp(`Keys: kept in ${dataDirectory}/keys\\.json`));
  assert.ok(!second.output().includes(appKey) && !second.output().includes(adminKey), 'the keys are printed only when generated');
  const balance = await call('GET', '/v1/accounts/e2e/balance', appKey);
  assert.equal(balance.body.available, 7, 'the data survived the restart');
  assert.equal(await stop(second, 'SIGINT'), 0, 'exits 0 on SIGINT');
});

it('stops the start with a message naming a bad setting (exit 2)', async () => {
  const child = spawn(process.execPath, ['bin/tally.js', 'start'], {
    env: { PATH: process.env.PATH, TALLY_DATA_DIR: dataDirectory, TALLY_PLANS: '/nonexistent/plans.json' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.on('data', (chunk) => (stderr += chunk));
  const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
  assert.equal(code, 2);
  assert.match(stderr, /TALLY_PLANS/);
});
