import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { parseSinks } from './ops/alert-sinks.js';

/**
 * Every setting, read from the environment once and validated. A bad value stops the start
 * with a message that names the variable; secrets are never printed.
 */
const optionalText = z
  .string()
  .optional()
  .transform((value) => (value === undefined || value.trim() === '' ? undefined : value.trim()));

const environmentSchema = z.object({
  DATABASE_URL: optionalText.pipe(z.url({ protocol: /^postgres(ql)?$/ }).optional()),
  PORT: z.coerce.number().int().min(0).max(65_535).default(3000),
  HOST: z.string().min(1).default('127.0.0.1'),
  TALLY_DATA_DIR: z.string().min(1).default('./.tally'),
  TALLY_API_KEY: optionalText.pipe(z.string().min(16, 'at least 16 characters').optional()),
  TALLY_ADMIN_KEY: optionalText.pipe(z.string().min(16, 'at least 16 characters').optional()),
  TALLY_VIEWER_KEY: optionalText.pipe(z.string().min(16, 'at least 16 characters').optional()),
  TALLY_METRICS_KEY: optionalText.pipe(z.string().min(16, 'at least 16 characters').optional()),
  NODE_ENV: optionalText,
  TALLY_PLANS: z.string().min(1).default('plans.example.json'),
  TALLY_DB_POOL_SIZE: z.coerce.number().int().min(2).max(200).default(20),
  TALLY_DB_STATEMENT_TIMEOUT_MS: z.coerce.number().int().min(100).max(600_000).default(10_000),
  TALLY_SWEEP_INTERVAL_SECONDS: z.coerce.number().int().min(1).max(60).default(15),
  TALLY_WEBHOOK_CONCURRENCY: z.coerce.number().int().min(1).max(64).default(4),
  STRIPE_SECRET_KEY: optionalText,
  TALLY_FINGERPRINT_SECRET: optionalText.pipe(z.string().min(16, 'at least 16 characters').optional()),
  STRIPE_WEBHOOK_SECRET: optionalText,
  STRIPE_API_BASE: optionalText.pipe(z.url().optional()),
  TALLY_ALERT_WEBHOOK_URLS: optionalText,
  TALLY_CHECKOUT_URL_HOSTS: optionalText,
  TALLY_EVENTS_ALLOW_PRIVATE: z.enum(['', '0', '1', 'false', 'true']).default(''),
  TALLY_PAGERDUTY_ROUTING_KEY: optionalText,
  TALLY_RECONCILE_INTERVAL_HOURS: z.coerce
    .number()
    .int()
    .min(0)
    .max(24 * 30)
    .default(24),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type Environment = z.infer<typeof environmentSchema>;

export interface Config {
  databaseUrl: string | undefined;
  port: number;
  host: string;
  dataDirectory: string;
  /** TALLY_DATA_DIR was left to its default (./.tally): as root, its cluster may live elsewhere. */
  dataDirectoryDefaulted: boolean;
  apiKey: string | undefined;
  adminKey: string | undefined;
  viewerKey: string | undefined;
  /** Opens /metrics only (Prometheus). */
  metricsKey: string | undefined;
  /** NODE_ENV=production: settings that only development may leave out are required. */
  production: boolean;
  plansPath: string;
  databasePoolSize: number;
  statementTimeoutMilliseconds: number;
  sweepIntervalSeconds: number;
  /** Webhook events applied at once per process. */
  webhookEventsConcurrentMax: number;
  stripeSecretKey: string | undefined;
  fingerprintSecret: string | undefined;
  stripeWebhookSecrets: string[];
  stripeApiBase: string | undefined;
  alertWebhookUrls: string[];
  /** The only hosts a checkout's success_url and cancel_url may name; empty: any https host. */
  checkoutUrlHosts: string[];
  /** Event endpoints may name private and loopback hosts, and plain http to loopback (development only). */
  eventsAllowPrivate: boolean;
  pagerDutyRoutingKey: string | undefined;
  reconcileIntervalHours: number;
  logLevel: Environment['LOG_LEVEL'];
}

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const splitList = (value: string | undefined): string[] =>
  value === undefined
    ? []
    : value
        .split(',')
        .map((part) => part.trim())
        .filter((part) => part !== '');

export function loadConfig(environment: NodeJS.ProcessEnv = process.env): Config {
  const result = environmentSchema.safeParse(environment);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => `  ${issue.path.join('.')}: ${issue.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const value = result.data;
  checkAlertSinks(splitList(value.TALLY_ALERT_WEBHOOK_URLS), value.TALLY_PAGERDUTY_ROUTING_KEY);
  const production = value.NODE_ENV === 'production';
  // In development the secret is generated into the database, beside the hashes it keys; a
  // dump of a production database must not be enough to test guessed emails against them.
  if (production && value.TALLY_FINGERPRINT_SECRET === undefined) {
    throw new ConfigError(
      'invalid configuration:\n  TALLY_FINGERPRINT_SECRET: required with NODE_ENV=production (at least 16 characters; it keys the hashes of trial claims and erasure pseudonyms, so keep it out of the database and never change it)',
    );
  }
  checkDistinctKeys({
    TALLY_API_KEY: value.TALLY_API_KEY,
    TALLY_ADMIN_KEY: value.TALLY_ADMIN_KEY,
    TALLY_VIEWER_KEY: value.TALLY_VIEWER_KEY,
    TALLY_METRICS_KEY: value.TALLY_METRICS_KEY,
  });
  return {
    databaseUrl: value.DATABASE_URL,
    port: value.PORT,
    host: value.HOST,
    dataDirectory: resolve(value.TALLY_DATA_DIR),
    dataDirectoryDefaulted: environment.TALLY_DATA_DIR === undefined || environment.TALLY_DATA_DIR === '',
    apiKey: value.TALLY_API_KEY,
    adminKey: value.TALLY_ADMIN_KEY,
    viewerKey: value.TALLY_VIEWER_KEY,
    metricsKey: value.TALLY_METRICS_KEY,
    production,
    plansPath: resolve(value.TALLY_PLANS),
    databasePoolSize: value.TALLY_DB_POOL_SIZE,
    statementTimeoutMilliseconds: value.TALLY_DB_STATEMENT_TIMEOUT_MS,
    sweepIntervalSeconds: value.TALLY_SWEEP_INTERVAL_SECONDS,
    webhookEventsConcurrentMax: value.TALLY_WEBHOOK_CONCURRENCY,
    stripeSecretKey: value.STRIPE_SECRET_KEY,
    fingerprintSecret: value.TALLY_FINGERPRINT_SECRET,
    stripeWebhookSecrets: splitList(value.STRIPE_WEBHOOK_SECRET),
    stripeApiBase: value.STRIPE_API_BASE,
    alertWebhookUrls: splitList(value.TALLY_ALERT_WEBHOOK_URLS),
    checkoutUrlHosts: splitList(value.TALLY_CHECKOUT_URL_HOSTS).map((host) => host.toLowerCase()),
    eventsAllowPrivate: value.TALLY_EVENTS_ALLOW_PRIVATE === '1' || value.TALLY_EVENTS_ALLOW_PRIVATE === 'true',
    pagerDutyRoutingKey: value.TALLY_PAGERDUTY_ROUTING_KEY,
    reconcileIntervalHours: value.TALLY_RECONCILE_INTERVAL_HOURS,
    logLevel: value.LOG_LEVEL,
  };
}

/**
 * Each key opens something different; the same value for two of them would give the app (or
 * a dashboard viewer) the admin's reach, so that is refused at start, naming the settings.
 */
function checkDistinctKeys(keys: Record<string, string | undefined>): void {
  const entries = Object.entries(keys).filter((entry): entry is [string, string] => entry[1] !== undefined);
  for (const [index, [name, value]] of entries.entries()) {
    const same = entries.slice(index + 1).find((other) => other[1] === value);
    if (same !== undefined)
      throw new ConfigError(`invalid configuration:\n  ${name}, ${same[0]}: must differ; each key opens different calls`);
  }
}

function checkAlertSinks(urls: string[], pagerDutyRoutingKey: string | undefined): void {
  let sinks: ReturnType<typeof parseSinks>;
  try {
    sinks = parseSinks(urls);
  } catch (error) {
    throw new ConfigError(`invalid configuration:\n  TALLY_ALERT_WEBHOOK_URLS: ${(error as Error).message}`);
  }
  if (sinks.some((sink) => sink.kind === 'pagerduty') && pagerDutyRoutingKey === undefined) {
    throw new ConfigError(
      'invalid configuration:\n  TALLY_PAGERDUTY_ROUTING_KEY: required by the PagerDuty sink in TALLY_ALERT_WEBHOOK_URLS',
    );
  }
}

export interface ApiKeys {
  apiKey: string;
  adminKey: string;
  /** The read-only key (TALLY_VIEWER_KEY), when set. */
  viewerKey?: string | undefined;
  /** The key for /metrics alone (TALLY_METRICS_KEY), when set. */
  metricsKey?: string | undefined;
  /** Where they come from: both set in the environment, or (one or both) the data folder's keys.json. */
  source: 'environment' | 'data-folder';
  /** Which of the two came from the environment (never written to keys.json, never printed). */
  fromEnvironment: { apiKey: boolean; adminKey: boolean };
  /** True when this start generated one of them. */
  generated: boolean;
}

const storedKeysSchema = z.strictObject({ apiKey: z.string().min(16).optional(), adminKey: z.string().min(16).optional() });
type StoredKeys = z.infer<typeof storedKeysSchema>;

/**
 * The bearer keys: from the environment when both are set; otherwise the ones kept in the data
 * folder, generated on the first start (file mode 0600).
 */
export function resolveApiKeys(config: Config): ApiKeys {
  const keys = resolveAppAndAdminKeys(config);
  const all = {
    TALLY_API_KEY: keys.apiKey,
    TALLY_ADMIN_KEY: keys.adminKey,
    TALLY_VIEWER_KEY: config.viewerKey,
    TALLY_METRICS_KEY: config.metricsKey,
  };
  // A key from the environment may equal one kept in the data folder; checked once both are known.
  checkDistinctKeys(all);
  return { ...keys, viewerKey: config.viewerKey, metricsKey: config.metricsKey };
}

/**
 * keys.json holds only the keys Tally generated. With one key of the pair in the environment,
 * the other is kept in (or generated into) keys.json and the environment's is never written
 * there: a secret the operator keeps elsewhere must not be copied to disk. A key an earlier
 * version wrote there from the environment (the file's value equals the environment's) is
 * removed from the file.
 */
function resolveAppAndAdminKeys(config: Config): ApiKeys {
  const fromEnvironment = { apiKey: config.apiKey !== undefined, adminKey: config.adminKey !== undefined };
  if (config.apiKey !== undefined && config.adminKey !== undefined) {
    return { apiKey: config.apiKey, adminKey: config.adminKey, source: 'environment', fromEnvironment, generated: false };
  }
  const path = join(config.dataDirectory, 'keys.json');
  let stored: StoredKeys = {};
  if (existsSync(path)) {
    const parsed = storedKeysSchema.safeParse(JSON.parse(readFileSync(path, 'utf8')));
    if (!parsed.success) throw new ConfigError(`${path}: not a valid keys file; delete it to generate new keys`);
    stored = parsed.data;
  }
  const file: StoredKeys = {};
  if (stored.apiKey !== undefined && stored.apiKey !== config.apiKey) file.apiKey = stored.apiKey;
  if (stored.adminKey !== undefined && stored.adminKey !== config.adminKey) file.adminKey = stored.adminKey;
  let generated = false;
  if (config.apiKey === undefined && file.apiKey === undefined) {
    file.apiKey = `tally_app_${randomBytes(24).toString('base64url')}`;
    generated = true;
  }
  if (config.adminKey === undefined && file.adminKey === undefined) {
    file.adminKey = `tally_admin_${randomBytes(24).toString('base64url')}`;
    generated = true;
  }
  if (JSON.stringify(file) !== JSON.stringify(stored)) {
    mkdirSync(config.dataDirectory, { recursive: true });
    writeFileSync(path, `${JSON.stringify(file, null, 2)}\n`, { mode: 0o600 });
    chmodSync(path, 0o600);
  }
  const apiKey = config.apiKey ?? file.apiKey;
  const adminKey = config.adminKey ?? file.adminKey;
  if (apiKey === undefined || adminKey === undefined) throw new Error('a key is neither in the environment nor in keys.json');
  return { apiKey, adminKey, source: 'data-folder', fromEnvironment, generated };
}
