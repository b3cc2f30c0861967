import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { loadConfig, resolveApiKeys } from '../../src/config.js';
import { canonicalJson, payloadHash } from '../../src/ledger/payload-hash.js';

describe('configuration', () => {
  it('reads defaults and lists of webhook secrets', () => {
    const config = loadConfig({ STRIPE_WEBHOOK_SECRET: 'whsec_a, whsec_b' });
    assert.equal(config.port, 3000);
    assert.equal(config.host, '127.0.0.1');
    assert.equal(config.databaseUrl, undefined);
    assert.deepEqual(config.stripeWebhookSecrets, ['whsec_a', 'whsec_b']);
  });

  it('stops on a bad setting with a message naming it, without echoing secrets', () => {
    assert.throws(() => loadConfig({ PORT: 'eighty' }), /PORT/);
    assert.throws(() => loadConfig({ DATABASE_URL: 'mysql://x' }), /DATABASE_URL/);
    assert.throws(
      () => loadConfig({ TALLY_API_KEY: 'short-secret' }),
      (error: Error) => /TALLY_API_KEY/.test(error.message) && !error.message.includes('short-secret'),
    );
  });

  it('stops on alert sinks it cannot use, naming the setting', () => {
    assert.throws(() => loadConfig({ TALLY_ALERT_WEBHOOK_URLS: 'not a url' }), /TALLY_ALERT_WEBHOOK_URLS/);
    assert.throws(() => loadConfig({ TALLY_ALERT_WEBHOOK_URLS: 'https://events.pagerduty.com/v2/enqueue' }), /TALLY_PAGERDUTY_ROUTING_KEY/);
    assert.deepEqual(
      loadConfig({ TALLY_ALERT_WEBHOOK_URLS: 'https://hooks.slack.com/services/x, json+http://127.0.0.1:9/hook' }).alertWebhookUrls,
      ['https://hooks.slack.com/services/x', 'json+http://127.0.0.1:9/hook'],
    );
  });

  it('allows private event endpoints only when TALLY_EVENTS_ALLOW_PRIVATE says so, and refuses other values', () => {
    // Proves the development switch is off by default and that a typo stops the start rather than guessing.
    assert.equal(loadConfig({}).eventsAllowPrivate, false);
    assert.equal(loadConfig({ TALLY_EVENTS_ALLOW_PRIVATE: '1' }).eventsAllowPrivate, true);
    assert.equal(loadConfig({ TALLY_EVENTS_ALLOW_PRIVATE: '0' }).eventsAllowPrivate, false);
    assert.throws(() => loadConfig({ TALLY_EVENTS_ALLOW_PRIVATE: 'yes' }), /TALLY_EVENTS_ALLOW_PRIVATE/);
  });

  it('reads TALLY_METRICS_KEY and refuses it equal to another key, naming both', () => {
    // Proves the metrics key is a key of its own: one equal to the viewer key would make the two indistinguishable.
    assert.equal(loadConfig({ TALLY_METRICS_KEY: 'm'.repeat(20) }).metricsKey, 'm'.repeat(20));
    assert.throws(
      () => loadConfig({ TALLY_VIEWER_KEY: 'v'.repeat(20), TALLY_METRICS_KEY: 'v'.repeat(20) }),
      /TALLY_VIEWER_KEY, TALLY_METRICS_KEY: must differ/,
    );
    assert.throws(() => loadConfig({ TALLY_METRICS_KEY: 'short' }), /TALLY_METRICS_KEY/);
  });

  it('never writes a key from the environment to keys.json when only one of the pair is set', () => {
    // Proves keys.json holds only what Tally generated: with TALLY_API_KEY alone, the admin key is
    // generated into the file and the app key stays out of it, on every start; a file an older
    // version wrote with the environment's key in it loses that key and keeps the other.
    const directory = mkdtempSync(join(tmpdir(), 'tally-keys-'));
    const environmentKey = 'env-app-key-0123456789';
    const first = resolveApiKeys(loadConfig({ TALLY_DATA_DIR: directory, TALLY_API_KEY: environmentKey }));
    const path = join(directory, 'keys.json');
    assert.equal(first.apiKey, environmentKey);
    assert.equal(first.generated, true);
    assert.deepEqual(first.fromEnvironment, { apiKey: true, adminKey: false });
    assert.ok(!readFileSync(path, 'utf8').includes(environmentKey), 'the environment key is not on disk');
    assert.deepEqual(Object.keys(JSON.parse(readFileSync(path, 'utf8'))), ['adminKey']);
    const second = resolveApiKeys(loadConfig({ TALLY_DATA_DIR: directory, TALLY_API_KEY: environmentKey }));
    assert.equal(second.adminKey, first.adminKey);
    assert.equal(second.generated, false);

    const older = mkdtempSync(join(tmpdir(), 'tally-keys-'));
    writeFileSync(join(older, 'keys.json'), JSON.stringify({ apiKey: environmentKey, adminKey: 'kept-admin-key-0123456789' }));
    const cleaned = resolveApiKeys(loadConfig({ TALLY_DATA_DIR: older, TALLY_API_KEY: environmentKey }));
    assert.equal(cleaned.adminKey, 'kept-admin-key-0123456789');
    assert.deepEqual(JSON.parse(readFileSync(join(older, 'keys.json'), 'utf8')), { adminKey: 'kept-admin-key-0123456789' });
    assert.equal(statSync(join(older, 'keys.json')).mode & 0o777, 0o600);
  });

  it('generates keys once into the data folder (mode 0600) and reuses them', () => {
    const directory = mkdtempSync(join(tmpdir(), 'tally-keys-'));
    const config = loadConfig({ TALLY_DATA_DIR: directory });
    const first = resolveApiKeys(config);
    assert.equal(first.generated, true);
    assert.notEqual(first.apiKey, first.adminKey);
    assert.equal(statSync(join(directory, 'keys.json')).mode & 0o777, 0o600);
    const second = resolveApiKeys(config);
    assert.equal(second.generated, false);
    assert.equal(second.apiKey, first.apiKey);
    const fromEnvironment = resolveApiKeys(
      loadConfig({ TALLY_DATA_DIR: directory, TALLY_API_KEY: 'x'.repeat(20), TALLY_ADMIN_KEY: 'y'.repeat(20) }),
    );
    assert.equal(fromEnvironment.source, 'environment');
  });
});

describe('payload hash', () => {
  it('ignores field order and undefined fields, and sees every value', () => {
    assert.equal(canonicalJson({ b: 1, a: { d: [1, 2], c: null } }), '{"a":{"c":null,"d":[1,2]},"b":1}');
    assert.equal(payloadHash({ a: 1, b: 2 }), payloadHash({ b: 2, a: 1, c: undefined }));
    assert.notEqual(payloadHash({ amount: 10 }), payloadHash({ amount: 11 }));
  });
});
