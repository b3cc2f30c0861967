/**
 * `npx tsx bench/start.ts [--runs N] ROOT...`: what starting Tally costs, for one checkout or
 * several compared (a checkout of an older revision with its own node_modules, say), their runs
 * interleaved so that each meets the same load on the machine. Per run: `tally --version` (wall
 * time, CPU time, peak RSS, by /usr/bin/time), then `npm start` on a data folder started once
 * before (the first start runs initdb and the migrations): seconds until it prints where it
 * listens, the CPU the node process spent until then, its RSS after 10 s idle and its peak RSS
 * (VmRSS, VmHWM). Prints the median of each, with every run. Linux only (/proc).
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../src/db/embedded.js';

interface VersionRun {
  seconds: number;
  cpuSeconds: number;
  peakMebibytes: number;
}

interface StartRun {
  listeningSeconds: number;
  cpuSeconds: number;
  idleMebibytes: number;
  peakMebibytes: number;
}

const idleMilliseconds = 10_000;
const clockTicksPerSecond = 100;

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
};

function version(root: string): VersionRun {
  const run = spawnSync('/usr/bin/time', ['-f', '%e %U %S %M', process.execPath, 'bin/tally.js', '--version'], {
    cwd: root,
    encoding: 'utf8',
  });
  if (run.status !== 0) throw new Error(`tally --version failed in ${root}: ${run.stdout}${run.stderr}`);
  const [seconds = 0, user = 0, system = 0, kilobytes = 0] = (run.stderr.trim().split('\n').at(-1) ?? '').split(' ').map(Number);
  return { seconds, cpuSeconds: user + system, peakMebibytes: kilobytes / 1024 };
}

/** The children of a process, from /proc. */
function childrenOf(pid: number): number[] {
  return readdirSync(`/proc/${pid}/task`).flatMap((task) =>
    readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim().split(' ').filter(Boolean).map(Number),
  );
}

function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): number => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1]) / 1024;
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

/** utime and stime, fields 14 and 15 of /proc/PID/stat: CPU that other load on the machine does not inflate. */
function cpuSecondsOf(pid: number): number {
  const fields = (readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1] ?? '').split(' ');
  return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
}

async function start(root: string, dataDirectory: string, port: number): Promise<StartRun> {
  const began = performance.now();
  const child = spawn('npm', ['start'], {
    cwd: root,
    env: { ...process.env, TALLY_DATA_DIR: dataDirectory, PORT: String(port), LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk) => (output += chunk));
  child.stderr.on('data', (chunk) => (output += chunk));
  const exited = new Promise((done) => child.on('exit', done));
  while (!output.includes('listening on')) {
    if (child.exitCode !== null) throw new Error(`npm start failed in ${root}: ${output}`);
    await sleep(10);
  }
  const listeningSeconds = (performance.now() - began) / 1000;
  // npm runs `sh -c "exec node bin/tally.js start"`: the node process is npm's child.
  const node = childrenOf(child.pid ?? 0).find((pid) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes('bin/tally.js'));
  if (node === undefined) throw new Error(`no node process under npm start in ${root}`);
  const cpuSeconds = cpuSecondsOf(node);
  await sleep(idleMilliseconds);
  const memory = memoryOf(node);
  process.kill(node, 'SIGTERM');
  await exited;
  return { listeningSeconds, cpuSeconds, idleMebibytes: memory.rss, peakMebibytes: memory.peak };
}

const runsFlag = process.argv.indexOf('--runs');
const runs = runsFlag === -1 ? 5 : Number(process.argv[runsFlag + 1]);
const roots = process.argv.slice(2).filter((_, index, all) => all[index] !== '--runs' && all[index - 1] !== '--runs');
if (roots.length === 0) roots.push('.');

const sides = [];
for (const root of roots.map((path) => resolve(path))) {
  version(root); // the first run reads every file from disk: not measured
  const dataDirectory = mkdtempSync(join(tmpdir(), 'tally-bench-start-'));
  const port = await freePort();
  await start(root, dataDirectory, port);
  sides.push({ root, dataDirectory, port, versions: [] as VersionRun[], starts: [] as StartRun[] });
}
const loads = [loadavg()[0] ?? 0];
for (let run = 0; run < runs; run += 1) {
  for (const side of sides) side.versions.push(version(side.root));
  for (const side of sides) side.starts.push(await start(side.root, side.dataDirectory, side.port));
  loads.push(loadavg()[0] ?? 0);
}
for (const side of sides) {
  rmSync(side.dataDirectory, { recursive: true, force: true });
  console.log(side.root);
  const show = (label: string, values: number[], digits: number) =>
    console.log(`  ${label}: median ${median(values).toFixed(digits)} (${values.map((value) => value.toFixed(digits)).join(' ')})`);
  show(
    'tally --version, seconds',
    side.versions.map((run) => run.seconds),
    2,
  );
  show(
    'tally --version, CPU seconds',
    side.versions.map((run) => run.cpuSeconds),
    2,
  );
  show(
    'tally --version, peak RSS MiB',
    side.versions.map((run) => run.peakMebibytes),
    0,
  );
  show(
    'npm start until listening, seconds',
    side.starts.map((run) => run.listeningSeconds),
    2,
  );
  show(
    'npm start until listening, CPU seconds of node',
    side.starts.map((run) => run.cpuSeconds),
    2,
  );
  show(
    'npm start idle RSS MiB',
    side.starts.map((run) => run.idleMebibytes),
    0,
  );
  show(
    'npm start peak RSS MiB',
    side.starts.map((run) => run.peakMebibytes),
    0,
  );
}
console.log(`load average (1 minute) through the runs: ${loads.map((load) => load.toFixed(1)).join(' ')}`);
