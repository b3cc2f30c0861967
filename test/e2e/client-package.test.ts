import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { after, before, it } from 'node:test';
import { adminKey, appKey } from '../helpers/app.js';
import { serveTestApp, type ServedApp } from '../helpers/served-app.js';

/**
 * Issue 13: `npm pack` of client/ gives a tarball that installs into an empty project (its
 * dependencies from the npm cache that the repository's own install filled, or the registry),
 * whose example file type-checks against the packed types and runs against a real Tally.
 */
const run = promisify(execFile);
const root = resolve('.');
let served: ServedApp;
let scratch: string;

before(async () => {
  served = await serveTestApp();
  scratch = mkdtempSync(join(tmpdir(), 'tally-client-package-'));
});
after(async () => {
  await served.close();
  rmSync(scratch, { recursive: true, force: true });
});

it('packs, installs into an empty project, type-checks and runs its example against Tally', { timeout: 300_000 }, async () => {
  const packed = await run('npm', ['pack', '--json', '--pack-destination', scratch], {
    cwd: join(root, 'client'),
    maxBuffer: 16 * 1024 * 1024,
  });
  const [tarball] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('['))) as { filename: string; files: { path: string }[] }[];
  assert.ok(tarball !== undefined);
  const files = tarball.files.map((file) => file.path);
  for (const expected of [
    'dist/index.js',
    'dist/index.d.ts',
    'dist/openapi-types.d.ts',
    'examples/quick-start.ts',
    'README.md',
    'package.json',
  ])
    assert.ok(files.includes(expected), `the tarball holds ${expected}`);
  assert.ok(!files.some((file) => file.startsWith('src/') || file.startsWith('scripts/')), 'sources stay out of the tarball');

  const project = join(scratch, 'app');
  mkdirSync(project);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'tally-client-consumer', private: true, type: 'module' }));
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--ignore-scripts', join(scratch, tarball.filename)], {
    cwd: project,
    maxBuffer: 16 * 1024 * 1024,
  });
  const installed = JSON.parse(readFileSync(join(project, 'node_modules', '@tally', 'client', 'package.json'), 'utf8')) as { name: string };
  assert.equal(installed.name, '@tally/client');

  copyFileSync(join(project, 'node_modules', '@tally', 'client', 'examples', 'quick-start.ts'), join(project, 'quick-start.ts'));
  writeFileSync(
    join(project, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        lib: ['ES2022', 'DOM'],
        strict: true,
        outDir: 'out',
        // Node's own types (process) from this repository; the client's come from the installed package.
        typeRoots: [join(root, 'node_modules', '@types')],
        types: ['node'],
      },
      files: ['quick-start.ts'],
    }),
  );
  const typeScript = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  const checked = await run(process.execPath, [typeScript, '-p', 'tsconfig.json'], { cwd: project }).catch((error: { stdout?: string }) =>
    assert.fail(`the example does not type-check:\n${error.stdout}`),
  );
  assert.equal(checked.stdout, '');

  const accountId = `pack_${Date.now()}`;
  const ran = await run(process.execPath, [join(project, 'out', 'quick-start.js')], {
    cwd: project,
    env: { ...process.env, TALLY_URL: served.url, TALLY_API_KEY: appKey, TALLY_ADMIN_KEY: adminKey, EXAMPLE_ACCOUNT: accountId },
  });
  assert.equal(
    ran.stdout,
    ['spent 120, available 380', 'captured 150, released 50', 'refused: only 230 available', 'ledger entries 5, balance 230', ''].join(
      '\n',
    ),
  );
  const balance = await served.ledger.balance(accountId);
  assert.equal(balance.available, 230, 'the example spent against this Tally');
});
