import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { ConfigError, loadConfig, resolveApiKeys } from '../../src/config.js';
import { deliverAlerts, parseSinks } from '../../src/ops/alert-sinks.js';
import { raiseAlert } from '../../src/ops/alerts.js';
import { adminKey, appKey, createTestApp, fundedAccount, metricsKey, viewerKey, type TestApp } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import { deliver, event, signedHeader } from '../helpers/stripe-events.js';

// Proves: the HTTP surface holds against a careless or hostile client: keys are checked before
// a body is read, slow clients are cut off, failures and checkouts are rate limited, Stripe's
// refusals never reach the caller, answers are never cached or sniffed, the viewer key only
// reads, and secrets (sink URLs, the database's words) are never answered.
let test: TestApp;
let fake: FakeStripe;
before(async () => {
  fake = await new FakeStripe().start();
  test = await createTestApp({
    stripeApiBase: fake.url,
    rateLimits: { authFailuresPerMinuteMax: 5, signatureFailuresPerMinuteMax: 3, checkoutsPerAccountPerMinuteMax: 2 },
  });
});
after(async () => {
  await test.close();
  await fake.stop();
});

const checkoutBody = { pack_id: 'pack_1000', success_url: 'https://app.test/ok', cancel_url: 'https://app.test/no' };

describe('keys before bodies', () => {
  // Proves: an anonymous request is refused 401 before its body is read: a body that is not
  // JSON, and one over every route's limit, both get 401 (not 400 or 413), and a wrong key
  // costs no parse.
  it('answers 401 to an unauthenticated body without parsing it', async () => {
    const anonymous = await createTestApp({ database: test.database, rateLimits: { authFailuresPerMinuteMax: 1000 } });
    try {
      const notJson = await anonymous.app.inject({
        method: 'POST',
        url: '/v1/accounts/x/usage',
        headers: { 'content-type': 'application/json' },
        payload: '{"nested": [[[[[[',
      });
      assert.equal(notJson.statusCode, 401);
      assert.equal(notJson.json().error.code, 'unauthorized');
      const huge = await anonymous.app.inject({
        method: 'POST',
        url: '/v1/usage/batch',
        headers: { 'content-type': 'application/json', authorization: 'Bearer wrong-key-0123456789' },
        payload: `[${'1,'.repeat(1_500_000)}1]`,
      });
      assert.equal(huge.statusCode, 401);
      // The same body with the key is read, and refused for its size by this route's limit.
      const keyed = await anonymous.app.inject({
        method: 'POST',
        url: '/v1/accounts/x/usage',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${appKey}` },
        payload: `[${'1,'.repeat(100_000)}1]`,
      });
      assert.equal(keyed.statusCode, 413);
    } finally {
      await anonymous.close();
    }
  });

  // Proves: a client that sends a partial body and then stalls is cut off by the request
  // timeout (the connection stayed open indefinitely).
  it('cuts off a slow partial body', async () => {
    const slow = await createTestApp({
      database: test.database,
      httpLimits: { requestTimeoutMilliseconds: 1000, headersTimeoutMilliseconds: 1000 },
    });
    try {
      const address = await slow.app.listen({ port: 0, host: '127.0.0.1' });
      const port = Number(new URL(address).port);
      const started = Date.now();
      const outcome = await new Promise<{ closedAfterMilliseconds: number; answer: string }>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let answer = '';
        socket.on('data', (chunk) => (answer += chunk.toString()));
        socket.on('close', () => resolve({ closedAfterMilliseconds: Date.now() - started, answer }));
        socket.on('error', () => undefined);
        socket.write(
          `POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"id": "evt_`,
        );
        // A guard for the test itself: never wait forever.
        setTimeout(() => socket.destroy(), 8000).unref();
      });
      assert.ok(outcome.closedAfterMilliseconds < 5000, `closed after ${outcome.closedAfterMilliseconds} ms`);
      assert.match(outcome.answer, /^HTTP\/1\.1 408/);
    } finally {
      await slow.close();
    }
  });
});

describe('rate limits', () => {
  // Proves: failed keys from one address are answered 429 with Retry-After past the limit, in
  // SPEC's error shape, while the right key from the same address still works.
  it('limits wrong keys per address', async () => {
    const statuses: number[] = [];
    let last: Awaited<ReturnType<typeof test.app.inject>> | undefined;
    for (let attempt = 0; attempt < 7; attempt += 1) {
      last = await test.app.inject({
        method: 'GET',
        url: '/v1/accounts/x/balance',
        headers: { authorization: 'Bearer guess-0123456789abcdef' },
      });
      statuses.push(last.statusCode);
    }
    assert.deepEqual(statuses, [401, 401, 401, 401, 401, 429, 429]);
    assert.equal(last?.json().error.code, 'rate_limited');
    assert.ok(Number(last?.headers['retry-after']) > 0);
    await fundedAccount(test, 'limit-ok', 0);
    assert.equal((await test.call('GET', '/v1/accounts/limit-ok/balance')).status, 200);
  });

  // Proves: bad webhook signatures from one address are answered 429 past the limit and
  // nothing is stored, while a good signature from the same address is still taken (behind a
  // proxy, Stripe and an attacker share an address).
  it('limits bad webhook signatures per address, never good ones', async () => {
    const statuses: number[] = [];
    for (let attempt = 0; attempt < 5; attempt += 1) {
      statuses.push(
        (await deliver(test, event('customer.created', { id: 'cus_x', object: 'customer' }), signedHeader('other payload'))).status,
      );
    }
    assert.deepEqual(statuses, [400, 400, 400, 429, 429]);
    const { rows } = await test.database.db.query(`select 1 from webhook_events where payload->'data'->'object'->>'id' = 'cus_x'`);
    assert.equal(rows.length, 0);
    const good = await deliver(test, event('customer.created', { id: 'cus_good', object: 'customer' }));
    assert.equal(good.status, 200);
  });

  // Proves: checkout sessions are limited per account (each is a call to Stripe), with 429 and
  // Retry-After, and another account is not affected.
  it('limits checkout sessions per account', async () => {
    await fundedAccount(test, 'buyer-1', 0);
    await fundedAccount(test, 'buyer-2', 0);
    const statuses: number[] = [];
    for (let attempt = 0; attempt < 3; attempt += 1)
      statuses.push((await test.call('POST', '/v1/accounts/buyer-1/checkout', checkoutBody)).status);
    assert.deepEqual(statuses, [200, 200, 429]);
    assert.equal((await test.call('POST', '/v1/accounts/buyer-2/checkout', checkoutBody)).status, 200);
  });
});

describe('a body that stalls', () => {
  // Proves: a client that keeps its connection busy with a byte of body every 200 ms (so no idle
  // timer fires) is still cut at the request timeout, neither much before nor long after it,
  // and the client reads a 408 in the error shape of every other error. Bounded: one
  // connection on 127.0.0.1, a 1.5 s timeout, and a guard that ends the test by 8 s.
  it('is cut at the request timeout, with an answer the client reads', async () => {
    const requestTimeoutMilliseconds = 1500;
    const slow = await createTestApp({
      database: test.database,
      httpLimits: { requestTimeoutMilliseconds, headersTimeoutMilliseconds: 1000, connectionIdleTimeoutMilliseconds: 600 },
    });
    try {
      const address = await slow.app.listen({ port: 0, host: '127.0.0.1' });
      const port = Number(new URL(address).port);
      const started = Date.now();
      const outcome = await new Promise<{ closedAfterMilliseconds: number; answer: string; bytesSent: number }>((resolve) => {
        const socket = connect(port, '127.0.0.1');
        let answer = '';
        let bytesSent = 0;
        const trickle = setInterval(() => {
          if (socket.writable) {
            socket.write('1');
            bytesSent += 1;
          }
        }, 200);
        socket.on('data', (chunk) => (answer += chunk.toString()));
        socket.on('close', () => {
          clearInterval(trickle);
          resolve({ closedAfterMilliseconds: Date.now() - started, answer, bytesSent });
        });
        socket.on('error', () => undefined);
        socket.write(
          `POST /v1/accounts/stall/usage HTTP/1.1\r\nHost: x\r\nauthorization: Bearer ${appKey}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"amount": `,
        );
        // A guard for the test itself: never wait forever.
        setTimeout(() => socket.destroy(), 8000).unref();
      });
      assert.ok(outcome.bytesSent >= 5, `the body kept arriving (${outcome.bytesSent} bytes)`);
      assert.ok(
        outcome.closedAfterMilliseconds >= requestTimeoutMilliseconds - 100 &&
          outcome.closedAfterMilliseconds < requestTimeoutMilliseconds + 2500,
        `cut after ${outcome.closedAfterMilliseconds} ms`,
      );
      const [head = '', body = ''] = outcome.answer.split('\r\n\r\n');
      assert.match(head, /^HTTP\/1\.1 408 /);
      assert.match(head, /content-type: application\/json/i);
      assert.equal(JSON.parse(body).error.code, 'request_timeout');
    } finally {
      await slow.close();
    }
  });
});

describe("Stripe's refusals", () => {
  // Proves: a Stripe 4xx is answered 502 stripe_error without Stripe's text (it was 400
  // invalid_request with "Invalid API Key provided: sk_live_…"), a 401 raises an alert, and
  // 429s count as Stripe being unavailable (they open the breaker).
  it('answers 502 stripe_error, alerts on a refused key, and lets 429 open the breaker', async () => {
    const stripe = await new FakeStripe().start();
    const app = await createTestApp({
      database: test.database,
      stripeApiBase: stripe.url,
      rateLimits: { checkoutsPerAccountPerMinuteMax: 100 },
    });
    try {
      await fundedAccount(app, 'stripe-1', 0);
      stripe.refusal = {
        status: 401,
        body: { error: { type: 'invalid_request_error', message: 'Invalid API Key provided: sk_live_****abcd' } },
      };
      const refused = await app.call('POST', '/v1/accounts/stripe-1/checkout', checkoutBody);
      assert.equal(refused.status, 502);
      assert.equal(refused.body.error.code, 'stripe_error');
      assert.doesNotMatch(JSON.stringify(refused.body), /sk_live|Invalid API Key/);
      await new Promise((resolve) => setTimeout(resolve, 100));
      const alerts = await app.admin('GET', '/v1/admin/alerts');
      assert.ok(alerts.body.alerts.some((alert: { kind: string }) => alert.kind === 'stripe_key_refused'));
      stripe.refusal = {
        status: 400,
        body: { error: { type: 'invalid_request_error', message: 'No such price: price_x', param: 'line_items' } },
      };
      const invalid = await app.call('POST', '/v1/accounts/stripe-1/checkout', { ...checkoutBody, success_url: 'https://app.test/ok2' });
      assert.equal(invalid.status, 502);
      assert.doesNotMatch(JSON.stringify(invalid.body), /No such price/);
      assert.equal((await app.admin('GET', '/v1/admin/stripe-breaker')).body.failures, 0, 'a refusal is an answer, not an outage');
      stripe.refusal = { status: 429, body: { error: { type: 'rate_limit_error', message: 'Too many requests' } } };
      const limited: number[] = [];
      for (let attempt = 0; attempt < 6; attempt += 1)
        limited.push(
          (await app.call('POST', '/v1/accounts/stripe-1/checkout', { ...checkoutBody, success_url: `https://app.test/r${attempt}` }))
            .status,
        );
      assert.deepEqual(limited, [503, 503, 503, 503, 503, 503]);
      assert.equal((await app.admin('GET', '/v1/admin/stripe-breaker')).body.state, 'open');
    } finally {
      await app.close();
      await stripe.stop();
    }
  });
});

describe("Stripe's outages", () => {
  // Proves: for a Stripe 5xx, a 429 and a network error the caller reads 503 stripe_unavailable
  // in Tally's words, never Stripe's text (which may name hosts, accounts or requests).
  it("answers 503 stripe_unavailable in Tally's words for 5xx, 429 and network errors", async () => {
    const stripe = await new FakeStripe().start();
    const app = await createTestApp({
      database: test.database,
      stripeApiBase: stripe.url,
      rateLimits: { checkoutsPerAccountPerMinuteMax: 100 },
    });
    try {
      await fundedAccount(app, 'stripe-outage', 0);
      const attempt = async (path: string) =>
        app.call('POST', '/v1/accounts/stripe-outage/checkout', { ...checkoutBody, success_url: `https://app.test/${path}` });
      stripe.refusal = {
        status: 503,
        body: { error: { type: 'api_error', message: 'upstream pod ip-10-0-3-7 acct_1SecretInternal down' } },
      };
      const unavailable = await attempt('a');
      stripe.refusal = {
        status: 429,
        body: { error: { type: 'rate_limit_error', message: 'Too many requests for acct_1SecretInternal' } },
      };
      const limited = await attempt('b');
      await stripe.stop();
      const unreachable = await attempt('c');
      const answers = [unavailable, limited, unreachable];
      assert.deepEqual(
        answers.map((answer) => [answer.status, answer.body.error.code]),
        [
          [503, 'stripe_unavailable'],
          [503, 'stripe_unavailable'],
          [503, 'stripe_unavailable'],
        ],
      );
      assert.match(unavailable.body.error.message, /^Stripe answered HTTP 503 during checkout\.sessions\.create; nothing was done/);
      assert.match(limited.body.error.message, /^Stripe is rate limiting Tally \(HTTP 429\)/);
      assert.match(unreachable.body.error.message, /^Stripe could not be reached \(network error or timeout\)/);
      for (const answer of answers)
        assert.doesNotMatch(JSON.stringify(answer.body), /acct_1Secret|ip-10-0|connection to Stripe|ECONNREFUSED/);
    } finally {
      await app.close();
      await stripe.stop();
    }
  });
});

describe('headers, the viewer key, and what is never answered', () => {
  // Proves: API answers carry X-Content-Type-Options: nosniff and Cache-Control: no-store.
  it('sets nosniff and no-store', async () => {
    for (const url of ['/v1/accounts/limit-ok/balance', '/v1/nowhere']) {
      const response = await test.app.inject({ method: 'GET', url, headers: { authorization: `Bearer ${appKey}` } });
      assert.equal(response.headers['x-content-type-options'], 'nosniff');
      assert.equal(response.headers['cache-control'], 'no-store');
    }
  });

  // Proves: the dashboard is served with a Content-Security-Policy that allows no inline script
  // or style and no framing, and the page holds none: its script and style are files of their own.
  it('serves the dashboard under a CSP without inline script, never framed', async () => {
    const page = await test.app.inject({ method: 'GET', url: '/dashboard' });
    assert.equal(page.statusCode, 200);
    const policy = String(page.headers['content-security-policy']);
    assert.match(policy, /script-src 'self'(;|$)/);
    assert.match(policy, /frame-ancestors 'none'/);
    assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
    assert.equal(page.headers['x-frame-options'], 'DENY');
    assert.doesNotMatch(page.body, /<script>|<style>|\son[a-z]+=/i, 'no inline script, style or handler');
    for (const [url, type] of [
      ['/dashboard/app.js', 'text/javascript'],
      ['/dashboard/app.css', 'text/css'],
    ]) {
      const asset = await test.app.inject({ method: 'GET', url: url ?? '' });
      assert.equal(asset.statusCode, 200);
      assert.match(String(asset.headers['content-type']), new RegExp(type ?? ''));
    }
  });

  // Proves: the viewer key reads every GET of app and admin calls and /metrics, and every
  // write answers 403 with it.
  it('lets the viewer key read and never write', async () => {
    const read = async (url: string) => (await test.call('GET', url, undefined, viewerKey)).status;
    for (const url of [
      '/v1/accounts/limit-ok',
      '/v1/accounts/limit-ok/balance',
      '/v1/accounts/limit-ok/ledger',
      '/v1/admin/alerts',
      '/v1/admin/accounts',
      '/v1/admin/webhook-events',
      '/metrics',
    ]) {
      assert.equal(await read(url), 200, url);
    }
    const writes: [string, string, unknown][] = [
      ['PUT', '/v1/accounts/limit-ok', {}],
      ['POST', '/v1/accounts/limit-ok/usage', { amount: 1, idempotency_key: 'viewer-1' }],
      ['POST', '/v1/accounts/limit-ok/grants', { amount: 1, source: 'promo', reason: 'r', idempotency_key: 'viewer-2' }],
      ['POST', '/v1/admin/reconcile', {}],
      ['DELETE', '/v1/accounts/limit-ok/personal-data', { reason: 'r' }],
    ];
    for (const [method, url, body] of writes) {
      const response = await test.call(method as 'POST', url, body, viewerKey);
      assert.equal(response.status, 403, url);
      assert.equal(response.body.error.code, 'forbidden');
    }
  });

  // Proves: the viewer key never reaches personal data (SPEC): the GDPR export, trial
  // eligibility and client references are refused; emails and names are masked wherever an
  // account is read; search never matches an email; a Stripe event's payload is left out; an
  // endpoint URL shows only its scheme and host. The admin key still reads all of it.
  it('keeps personal data from the viewer key', async () => {
    const email = 'jane.doe@example.com';
    assert.equal((await test.call('PUT', '/v1/accounts/pd-viewer', { email, name: 'Jane Doe' })).status, 200);
    const asViewer = async (url: string) => test.call('GET', url, undefined, viewerKey);
    for (const url of [
      '/v1/accounts/pd-viewer/export',
      '/v1/accounts/pd-viewer/client-reference',
      `/v1/accounts/pd-viewer/trial-eligibility?email=${encodeURIComponent(email)}`,
      '/v1/admin/accounts/search?sort=email',
    ]) {
      const refused = await asViewer(url);
      assert.equal(refused.status, 403, url);
      assert.equal(refused.body.error.code, 'forbidden', url);
      assert.equal((await test.admin('GET', url)).status, 200, `admin ${url}`);
    }
    const account = (await asViewer('/v1/accounts/pd-viewer')).body;
    assert.equal(account.email, 'j***@e***.com');
    assert.equal(account.name, 'J***');
    assert.equal((await test.admin('GET', '/v1/accounts/pd-viewer')).body.email, email);
    assert.equal((await asViewer('/v1/admin/accounts/search?search=jane')).body.accounts.length, 0, 'no match on the email');
    assert.equal((await test.admin('GET', '/v1/admin/accounts/search?search=jane')).body.accounts.length, 1);
    const searched = (await asViewer('/v1/admin/accounts/search?search=pd-viewer')).body.accounts;
    assert.deepEqual([searched[0].email, searched[0].name], ['j***@e***.com', 'J***']);
    const listed = (await asViewer('/v1/admin/accounts?search=pd-viewer')).body.accounts;
    assert.equal(listed[0].name, 'J***');

    const stored = event('customer.updated', { id: 'cus_pd', object: 'customer', email, address: { line1: '1 Private Road' } });
    await deliver(test, stored);
    assert.equal((await asViewer(`/v1/admin/webhook-events/${stored.id}`)).body.payload, null);
    assert.equal((await test.admin('GET', `/v1/admin/webhook-events/${stored.id}`)).body.payload.data.object.email, email);

    const endpoint = await test.admin('POST', '/v1/admin/webhook-endpoints', { url: 'https://93.184.215.14/hooks/tok_secret?key=abc' });
    assert.equal(endpoint.status, 201);
    const endpoints = (await asViewer('/v1/admin/webhook-endpoints')).body.endpoints;
    assert.deepEqual(
      endpoints.map((item: { url: string }) => item.url),
      ['https://93.184.215.14/***'],
    );
    assert.equal((await asViewer(`/v1/admin/webhook-endpoints/${endpoint.body.id}`)).body.url, 'https://93.184.215.14/***');
    await test.admin('DELETE', `/v1/admin/webhook-endpoints/${endpoint.body.id}`);

    // Nothing the viewer read above spells the email, the name or the endpoint's token.
    const read = JSON.stringify([account, searched, listed, endpoints]);
    for (const secret of [email, 'Jane Doe', 'tok_secret']) assert.ok(!read.includes(secret), secret);
  });

  // Proves: TALLY_METRICS_KEY opens /metrics and nothing else, read or write.
  it('lets the metrics key read /metrics only', async () => {
    const metrics = await test.call('GET', '/metrics', undefined, metricsKey);
    assert.equal(metrics.status, 200);
    assert.match(String(metrics.body), /tally_/);
    for (const [method, url] of [
      ['GET', '/v1/accounts/limit-ok/balance'],
      ['GET', '/v1/admin/alerts'],
      ['GET', '/v1/admin/caller'],
      ['POST', '/v1/accounts/limit-ok/usage'],
    ] as const) {
      const refused = await test.call(method, url, method === 'POST' ? { amount: 1, idempotency_key: 'metrics-1' } : undefined, metricsKey);
      assert.equal(refused.status, 403, url);
      assert.equal(refused.body.error.code, 'forbidden');
    }
    assert.equal((await test.call('GET', '/metrics', undefined, appKey)).status, 403, 'the app key does not read metrics');
  });

  // Proves: alert sink URLs (a Slack webhook URL is a secret) are never returned by
  // GET /v1/admin/alerts, only a redacted name; the PagerDuty sink is recognised by its exact
  // host, so evilpagerduty.com never gets the routing key.
  it('redacts sink URLs and matches PagerDuty exactly', async () => {
    const secretPath = 'T000/B000/very-secret-token';
    await raiseAlert(test.database.db.pool, { kind: 'test_alert', key: 'test_alert_sink', severity: 'warning', message: 'sink test' });
    const sinks = parseSinks([`json+http://127.0.0.1:9/${secretPath}`]);
    await deliverAlerts(test.database.db, { sinks, pagerDutyRoutingKey: undefined, retryBaseSeconds: 1, retryDelaySecondsMax: 1 });
    const alerts = await test.admin('GET', '/v1/admin/alerts');
    const text = JSON.stringify(alerts.body);
    assert.ok(text.includes('"deliveries":[{'), 'the delivery is listed');
    assert.ok(!text.includes(secretPath), 'the sink URL is not answered');
    assert.equal(parseSinks(['https://evilpagerduty.com/v2/enqueue'])[0]?.kind, 'json');
    assert.equal(parseSinks(['https://events.pagerduty.com/v2/enqueue'])[0]?.kind, 'pagerduty');
  });

  // Proves: trial eligibility is asked by POST with the email and fingerprint in the body, and
  // the GET's query string is redacted from logged URLs.
  it('takes trial eligibility in a POST body and redacts the GET query in logs', async () => {
    await fundedAccount(test, 'trial-post', 0);
    const posted = await test.call('POST', '/v1/accounts/trial-post/trial-eligibility', {
      email: 'someone@example.com',
      device_fingerprint: 'fp-1',
    });
    assert.equal(posted.status, 200, JSON.stringify(posted.body));
    assert.equal(posted.body.eligible, true);
    const { redactQuery } = await import('../../src/http/server.js');
    assert.equal(typeof redactQuery, 'function');
    assert.equal(
      redactQuery('/v1/accounts/a/trial-eligibility?email=someone%40example.com'),
      '/v1/accounts/a/trial-eligibility?[redacted]',
    );
    assert.equal(redactQuery('/v1/accounts/a/ledger?limit=5'), '/v1/accounts/a/ledger?limit=5');
  });
});

describe('settings at start', () => {
  // Proves: the app key equal to the admin or viewer key is refused at start, naming both
  // settings, whether the equal key comes from the environment or the data folder.
  it('refuses equal keys', () => {
    const same = 'k'.repeat(24);
    assert.throws(
      () => loadConfig({ TALLY_API_KEY: same, TALLY_ADMIN_KEY: same }),
      (error: Error) =>
        error instanceof ConfigError && /TALLY_API_KEY, TALLY_ADMIN_KEY/.test(error.message) && !error.message.includes(same),
    );
    assert.throws(() => loadConfig({ TALLY_API_KEY: same, TALLY_VIEWER_KEY: same }), /TALLY_API_KEY, TALLY_VIEWER_KEY/);
    const directory = mkdtempSync(join(tmpdir(), 'tally-keys-'));
    writeFileSync(join(directory, 'keys.json'), JSON.stringify({ apiKey: same, adminKey: 'a'.repeat(24) }));
    assert.throws(
      () => resolveApiKeys(loadConfig({ TALLY_DATA_DIR: directory, TALLY_VIEWER_KEY: same })),
      /TALLY_API_KEY, TALLY_VIEWER_KEY/,
    );
  });

  // Proves: with NODE_ENV=production, TALLY_FINGERPRINT_SECRET is required (the start stops
  // naming it); in development the start says the secret is kept in the database.
  it('requires TALLY_FINGERPRINT_SECRET in production and says so in development', async () => {
    assert.throws(() => loadConfig({ NODE_ENV: 'production' }), /TALLY_FINGERPRINT_SECRET: required with NODE_ENV=production/);
    assert.equal(loadConfig({ NODE_ENV: 'production', TALLY_FINGERPRINT_SECRET: 's'.repeat(32) }).fingerprintSecret, 's'.repeat(32));
    const lines: string[] = [];
    const logger = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
    const { assemble } = await import('../../src/app.js');
    const { testCatalog } = await import('../helpers/app.js');
    const parts = await assemble({
      db: test.database.db,
      catalog: testCatalog(),
      keys: { apiKey: appKey, adminKey },
      logger,
      logLevel: 'silent',
      version: 'test',
      webhookSecrets: [],
      sweepIntervalSeconds: 60,
    });
    await parts.close();
    assert.ok(
      lines.some((line) => line.includes('TALLY_FINGERPRINT_SECRET is not set')),
      lines.join('\n'),
    );
  });
});
