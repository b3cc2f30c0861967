import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort } from '../../src/db/embedded.js';
import { portAnswers, postgresProcessesUnder, startTallyProcess, waitUntil, type StartedTally } from '../helpers/tally-process.js';

// Proves that Tally stops cleanly whatever process the signal reaches: SIGTERM to the pid that
// `npm start` returns (what Docker, systemd and supervisors send), Ctrl-C (SIGINT to the whole
// process group, PostgreSQL included until it got a session of its own), and SIGTERM to the
// shell that `npx tally start` runs Tally under. Each time Tally must stop intake, drain, close
// its pool and then stop its embedded PostgreSQL: no server for the data folder is left, the
// port is free, and nothing was logged at error level (a server stopping under Tally's pool
// would be).
const dataDirectory = resolve(mkdtempSync(join(tmpdir(), 'tally-signals-')));
after(() => rmSync(dataDirectory, { recursive: true, force: true }));

const ready = (output: string): boolean => output.includes('listening on');

async function assertStoppedCleanly(started: StartedTally, port: number): Promise<void> {
  await waitUntil('no PostgreSQL of the data folder is left', () => postgresProcessesUnder(dataDirectory).length === 0);
  await waitUntil(`port ${port} is free`, async () => !(await portAnswers(port)));
  assert.doesNotMatch(started.output(), /"level":(50|60)/, `nothing at error level:\n${started.output()}`);
}

describe('stopping Tally by a signal', () => {
  it('SIGTERM to the pid of `npm start` stops Tally and its database', async () => {
    const port = await freePort();
    const started = await startTallyProcess(
      'npm',
      ['start'],
      { TALLY_DATA_DIR: dataDirectory, PORT: String(port) },
      { ready, detached: true },
    );
    assert.ok(postgresProcessesUnder(dataDirectory).length > 0, 'the embedded PostgreSQL runs');
    process.kill(started.child.pid ?? 0, 'SIGTERM');
    await started.exited;
    await assertStoppedCleanly(started, port);
  });

  it('Ctrl-C (SIGINT to the process group of `npm start`) stops Tally first, then its database', async () => {
    const port = await freePort();
    const started = await startTallyProcess(
      'npm',
      ['start'],
      { TALLY_DATA_DIR: dataDirectory, PORT: String(port) },
      { ready, detached: true },
    );
    process.kill(-(started.child.pid ?? 0), 'SIGINT');
    await started.exited;
    await assertStoppedCleanly(started, port);
  });

  it('SIGTERM to the shell npm runs Tally under (`npx tally start`) stops Tally and its database', async () => {
    const port = await freePort();
    // `; true` keeps the shell from replacing itself with node, as npm's script shell does not.
    const started = await startTallyProcess(
      'sh',
      ['-c', 'node bin/tally.js start; true'],
      { TALLY_DATA_DIR: dataDirectory, PORT: String(port), npm_command: 'exec' },
      { ready, detached: true },
    );
    process.kill(started.child.pid ?? 0, 'SIGTERM');
    await started.exited;
    await assertStoppedCleanly(started, port);
  });
});
