import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, it } from 'node:test';
import { freePort } from '../../src/db/embedded.js';
import { keyFrom, startTallyProcess } from '../helpers/tally-process.js';

// Proves that the README's walkthrough works as written: the marked shell blocks, run in order
// (one script, so a later block goes on from the state the earlier ones left) with bash against
// a freshly started Tally (the printed keys and port substituted), answer every command with
// the shape the README shows under it, so the README cannot drift from what a new user sees.
const dataDirectory = mkdtempSync(join(tmpdir(), 'tally-walkthrough-'));
after(() => rmSync(dataDirectory, { recursive: true, force: true }));

interface Step {
  commands: string[];
  expected: string[];
}

/** The marked blocks, in order, each cut into steps. */
function walkthroughSteps(readme: string): Step[] {
  const blocks = [...readme.matchAll(/<!-- walkthrough:start -->\s*```sh\n([\s\S]*?)```\s*<!-- walkthrough:end -->/g)].map(
    (match) => match[1] ?? '',
  );
  assert.ok(blocks.length > 0, 'the README marks its walkthrough');
  return blocks.flatMap(blockSteps);
}

/** A block cut into steps: the commands, then the `# →` answers shown under them. */
function blockSteps(block: string): Step[] {
  const steps: Step[] = [];
  let current: Step = { commands: [], expected: [] };
  for (const line of block.split('\n')) {
    const answer = /^# → (.*)$/.exec(line);
    if (answer?.[1] !== undefined) {
      current.expected.push(answer[1]);
      continue;
    }
    if (line.trim() === '' || line.startsWith('#')) continue;
    if (current.expected.length > 0) {
      steps.push(current);
      current = { commands: [], expected: [] };
    }
    current.commands.push(line);
  }
  steps.push(current);
  return steps;
}

/**
 * The README's shape language, read as JSON: `"..."` is any value, `[...]` any array, and a
 * `...` member lets an object have members not shown.
 */
function shapeOf(text: string): unknown {
  const json = text
    .replace(/\[\.\.\.\]/g, '"..."')
    .replace(/,\s*\.\.\.\s*(?=})/g, ',"...":"..."')
    .replace(/{\s*\.\.\.\s*}/g, '{"...":"..."}');
  return JSON.parse(json);
}

function assertShape(actual: unknown, shape: unknown, path: string): void {
  if (shape === '...') return;
  if (Array.isArray(shape)) {
    assert.ok(Array.isArray(actual), `${path} is an array`);
    assert.equal(actual.length, shape.length, `${path} has ${shape.length} items`);
    shape.forEach((item, index) => assertShape(actual[index], item, `${path}[${index}]`));
    return;
  }
  if (shape !== null && typeof shape === 'object') {
    assert.ok(actual !== null && typeof actual === 'object' && !Array.isArray(actual), `${path} is an object`);
    const expectedKeys = Object.keys(shape).filter((key) => key !== '...');
    if (!('...' in shape)) assert.deepEqual(Object.keys(actual).sort(), expectedKeys.sort(), `${path} has exactly the members shown`);
    for (const key of expectedKeys)
      assertShape((actual as Record<string, unknown>)[key], (shape as Record<string, unknown>)[key], `${path}.${key}`);
    return;
  }
  assert.deepEqual(actual, shape, path);
}

it("runs the README's walkthrough and gets the answers it shows", async () => {
  const port = await freePort();
  const tally = await startTallyProcess(process.execPath, ['bin/tally.js', 'start'], { TALLY_DATA_DIR: dataDirectory, PORT: String(port) });
  try {
    const appKey = keyFrom(tally.output(), 'app');
    const adminKey = keyFrom(tally.output(), 'admin');
    const steps = walkthroughSteps(readFileSync('README.md', 'utf8'));
    assert.ok(steps.length >= 10, 'the walkthrough has its steps');
    const marker = '@@walkthrough-step@@';
    const script = steps
      .map((step) => step.commands.join('\n'))
      .map((commands) => `${commands}\nprintf '\\n${marker}\\n' >&2`)
      .join('\n')
      .replace('APP=tally_app_...', `APP=${appKey}`)
      .replace('ADMIN=tally_admin_...', `ADMIN=${adminKey}`)
      .replace('T=http://127.0.0.1:3000', `T=http://127.0.0.1:${port}`);
    // Answers on stdout and those that `field` shows on stderr go to one stream, in order.
    const run = spawnSync('bash', ['-e', '-c', `exec 2>&1\n${script}`], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(run.status, 0, `the walkthrough runs to its end:\n${run.stdout}`);
    const outputs = run.stdout.split(marker).map((text) => text.trim());
    steps.forEach((step, index) => {
      const output = outputs[index] ?? '';
      const lines = output.split('\n').filter((line) => line.trim() !== '');
      step.expected.forEach((expected, line) => {
        const where = `step ${index + 1} (${step.commands[0]?.trim()}), answer ${line + 1}`;
        const actualText = lines[line];
        assert.ok(actualText !== undefined, `${where}: an answer, got:\n${output}`);
        let actual: unknown;
        try {
          actual = JSON.parse(actualText);
        } catch (error) {
          assert.fail(`${where}: ${(error as Error).message} in ${actualText}`);
        }
        assertShape(actual, shapeOf(expected), where);
      });
    });
  } finally {
    tally.child.kill('SIGTERM');
    await tally.exited;
  }
});
