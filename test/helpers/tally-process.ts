import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createConnection } from 'node:net';

/**
 * A Tally started as a real process (`node bin/tally.js start`, `npm start`, ...), for the
 * end-to-end tests: waits until it prints where it listens, collects what it prints, and finds
 * the processes it leaves behind.
 */
export interface StartedTally {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

export async function startTallyProcess(
  command: string,
  args: string[],
  environment: Record<string, string>,
  options: { ready?: (output: string) => boolean; detached?: boolean } = {},
): Promise<StartedTally> {
  const child = spawn(command, args, {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'warn', ...environment },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: options.detached ?? false,
  });
  let output = '';
  child.stdout?.on('data', (chunk) => (output += chunk));
  child.stderr?.on('data', (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const ready = options.ready ?? ((text: string) => text.includes('listening on') && text.includes('key'));
  const deadline = Date.now() + 90_000;
  while (!ready(output)) {
    if (child.exitCode !== null) throw new Error(`tally exited ${child.exitCode}: ${output}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`tally did not start: ${output}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  return { child, output: () => output, exited };
}

export const keyFrom = (output: string, name: string): string => {
  const match = new RegExp(`${name} key:\\s+(\\S+)`).exec(output);
  assert.ok(match?.[1], `${name} key printed`);
  return match[1];
};

/** The pids of PostgreSQL servers whose data directory is under `folder` (read from /proc). */
export function postgresProcessesUnder(folder: string): number[] {
  const pids: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    let commandLine: string;
    try {
      commandLine = readFileSync(`/proc/${name}/cmdline`, 'utf8');
    } catch (error) {
      // The process ended between the listing and the read: it is not left behind.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT' || (error as NodeJS.ErrnoException).code === 'ESRCH') continue;
      throw error;
    }
    const parts = commandLine.split('\0');
    if (!(parts[0] ?? '').endsWith('postgres')) continue;
    if (parts.some((part) => part.startsWith(folder))) pids.push(Number(name));
  }
  return pids;
}

/** True when something accepts connections on the port. */
export function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ port, host: '127.0.0.1' });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Waits until `check` holds, or fails naming what was waited for. */
export async function waitUntil(what: string, check: () => boolean | Promise<boolean>, timeoutMilliseconds = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMilliseconds;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}
