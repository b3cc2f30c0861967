import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { adminKey, appKey, createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';

let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

const countRows = async (table: string): Promise<number> =>
  Number((await test.database.db.query<{ count: string }>(`select count(*)::int as count from ${table}`)).rows[0]?.count);

describe('authentication', () => {
  it('refuses a call without a key or with a wrong key (401)', async () => {
    const missing = await test.call('GET', '/v1/accounts/nobody/balance', undefined, null);
    assert.equal(missing.status, 401);
    assert.equal(missing.body.error.code, 'unauthorized');
    const wrong = await test.call('GET', '/v1/accounts/nobody/balance', undefined, 'not-the-key-at-all');
    assert.equal(wrong.status, 401);
  });

  it('refuses the app key on an admin call (403) and writes nothing', async () => {
    await fundedAccount(test, 'auth-1', 0);
    const before = await countRows('grants');
    const response = await test.call(
      'POST',
      '/v1/accounts/auth-1/grants',
      { amount: 5, source: 'promo', reason: 'x', idempotency_key: 'auth-g' },
      appKey,
    );
    assert.equal(response.status, 403);
    assert.equal(response.body.error.code, 'forbidden');
    assert.equal(await countRows('grants'), before);
  });

  it('accepts the admin key on app calls', async () => {
    const response = await test.call('GET', '/v1/accounts/auth-1/balance', undefined, adminKey);
    assert.equal(response.status, 200);
  });
});

describe('accounts', () => {
  it('creates an account with PUT, updates only the fields given, and reads it back', async () => {
    const created = await test.call('PUT', '/v1/accounts/acct:1@x', {
      email: 'jane@example.com',
      name: 'Jane',
      metadata: { plan: 'gold' },
    });
    assert.equal(created.status, 200);
    assert.equal(created.body.id, 'acct:1@x');
    const updated = await test.call('PUT', '/v1/accounts/acct:1@x', { name: 'Jane Doe' });
    assert.equal(updated.body.email, 'jane@example.com');
    assert.equal(updated.body.name, 'Jane Doe');
    const read = await test.call('GET', '/v1/accounts/acct:1@x');
    assert.equal(read.status, 200);
    assert.deepEqual(read.body.balance, { account_id: 'acct:1@x', available: 0, held: 0, debt: 0 });
    assert.deepEqual(read.body.grants, []);
    assert.deepEqual(read.body.metadata, { plan: 'gold' });
    assert.equal(read.body.stripe_customer_id, null);
  });

  it('answers 404 account_not_found for every call on an unknown account', async () => {
    for (const [method, url, body] of [
      ['GET', '/v1/accounts/ghost', undefined],
      ['GET', '/v1/accounts/ghost/balance', undefined],
      ['GET', '/v1/accounts/ghost/ledger', undefined],
      ['POST', '/v1/accounts/ghost/usage', { amount: 1, idempotency_key: 'ghost-u' }],
      ['POST', '/v1/accounts/ghost/holds', { amount: 1, idempotency_key: 'ghost-h' }],
      ['GET', '/v1/accounts/ghost/limits', undefined],
      ['GET', '/v1/accounts/ghost/low-balance-threshold', undefined],
      ['GET', '/v1/accounts/ghost/auto-top-up', undefined],
    ] as const) {
      const response = await test.call(method, url, body);
      assert.equal(response.status, 404, `${method} ${url}`);
      assert.equal(response.body.error.code, 'account_not_found', `${method} ${url}`);
    }
    const grant = await test.admin('POST', '/v1/accounts/ghost/grants', {
      amount: 1,
      source: 'promo',
      reason: 'r',
      idempotency_key: 'ghost-g',
    });
    assert.equal(grant.status, 404);
    const adjustment = await test.admin('POST', '/v1/accounts/ghost/adjustments', { amount: 1, reason: 'r', idempotency_key: 'ghost-a' });
    assert.equal(adjustment.status, 404);
    assert.equal(await countRows(`request_keys where key like 'ghost-%'`), 0);
  });

  it("reads every setting at its PUT's path in the PUT's shape, and in the account", async () => {
    // Proves SPEC's rule that every PUT of an account's settings has a GET answering the same
    // shape and that GET /v1/accounts/{id} includes them: support can see why a run was refused.
    const id = 'settings-1';
    await test.call('PUT', `/v1/accounts/${id}`, {});
    const fresh = await test.call('GET', `/v1/accounts/${id}`);
    assert.equal(fresh.body.low_balance_threshold, null);
    assert.equal(fresh.body.auto_top_up, null);
    assert.equal(fresh.body.limits.per_day, null);
    const neverSaved = await test.call('GET', `/v1/accounts/${id}/auto-top-up`);
    assert.equal(neverSaved.status, 200);
    assert.deepEqual(neverSaved.body, {
      account_id: id,
      enabled: false,
      threshold: null,
      pack_id: null,
      max_per_month: null,
      failures_in_row: 0,
      updated_at: null,
    });
    const puts: [string, unknown][] = [
      ['limits', { per_day: 700, per_month: 9000 }],
      ['low-balance-threshold', { threshold: 50 }],
      ['auto-top-up', { enabled: false, threshold: 100, pack_id: 'pack_1000', max_per_month: 2 }],
    ];
    for (const [path, body] of puts) {
      const saved = await test.call('PUT', `/v1/accounts/${id}/${path}`, body);
      assert.equal(saved.status, 200, `${path} ${JSON.stringify(saved.body)}`);
      const read = await test.call('GET', `/v1/accounts/${id}/${path}`);
      assert.equal(read.status, 200, path);
      assert.deepEqual(read.body, saved.body, path);
    }
    const account = await test.call('GET', `/v1/accounts/${id}`);
    assert.equal(account.body.low_balance_threshold, 50);
    assert.deepEqual({ per_day: account.body.limits.per_day, per_month: account.body.limits.per_month }, { per_day: 700, per_month: 9000 });
    assert.equal(account.body.auto_top_up.enabled, false);
    assert.equal(account.body.auto_top_up.threshold, 100);
    assert.equal(account.body.auto_top_up.pack_id, 'pack_1000');
  });

  it('refuses an account id outside the allowed characters', async () => {
    const response = await test.call('PUT', '/v1/accounts/bad%20id', {});
    assert.equal(response.status, 400);
    assert.equal(response.body.error.field, 'id');
  });
});

describe('validation writes nothing', () => {
  const bad: [string, unknown, string][] = [
    ['a fractional amount', { amount: 1.5, idempotency_key: 'v1' }, 'amount'],
    ['a string amount', { amount: '10', idempotency_key: 'v2' }, 'amount'],
    ['a zero amount', { amount: 0, idempotency_key: 'v3' }, 'amount'],
    ['a negative amount', { amount: -3, idempotency_key: 'v4' }, 'amount'],
    // biome-ignore lint/correctness/noPrecisionLoss: the point is an amount past the safe range
    ['an unsafe amount', { amount: 9007199254740993, idempotency_key: 'v5' }, 'amount'],
    ['a missing key', { amount: 1 }, 'idempotency_key'],
    ['an unknown field', { amount: 1, idempotency_key: 'v6', colour: 'red' }, 'colour'],
    // A spend names amount or meter (priced usage), checked once the body's own fields parse: an
    // empty body is first missing its key.
    ['no body', undefined, 'idempotency_key'],
  ];
  for (const [name, body, field] of bad) {
    it(`refuses ${name} with 400 naming ${field}`, async () => {
      await fundedAccount(test, 'valid-1', 100);
      const entriesBefore = await countRows('entries');
      const response = await test.call('POST', '/v1/accounts/valid-1/usage', body);
      assert.equal(response.status, 400);
      assert.equal(response.body.error.code, 'invalid_request');
      assert.equal(response.body.error.field, field);
      assert.equal(await countRows('entries'), entriesBefore);
      assert.equal(await countRows(`request_keys where key like 'v%'`), 0);
    });
  }

  it('refuses malformed JSON with 400', async () => {
    const response = await test.app.inject({
      method: 'POST',
      url: '/v1/accounts/valid-1/usage',
      headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
      payload: '{"amount": 1,',
    });
    assert.equal(response.statusCode, 400);
    assert.equal(response.json().error.code, 'invalid_request');
  });

  it('refuses a body over 1 MiB with 413', async () => {
    const response = await test.app.inject({
      method: 'POST',
      url: '/v1/accounts/valid-1/usage',
      headers: { authorization: `Bearer ${appKey}`, 'content-type': 'application/json' },
      payload: JSON.stringify({ amount: 1, idempotency_key: 'big', description: 'x'.repeat(1024 * 1024) }),
    });
    assert.equal(response.statusCode, 413);
    assert.equal(response.json().error.code, 'payload_too_large');
  });
});

describe('health, metrics and description', () => {
  it('answers liveness and readiness', async () => {
    assert.equal((await test.call('GET', '/healthz', undefined, null)).status, 200);
    const ready = await test.call('GET', '/readyz', undefined, null);
    assert.equal(ready.status, 200);
    assert.equal(ready.body.status, 'ready');
  });

  it('reports not ready when a migration is missing', async () => {
    const { rows } = await test.database.db.query<{ version: number; name: string }>(
      `delete from tally_migrations where version = (select max(version) from tally_migrations) returning version, name`,
    );
    try {
      const response = await test.call('GET', '/readyz', undefined, null);
      assert.equal(response.status, 503);
      // A status only: which migrations are pending is for the operator's log, not for anyone who asks.
      assert.deepEqual(response.body, { status: 'unavailable', reason: 'migrations_pending' });
    } finally {
      await test.database.db.query('insert into tally_migrations (version, name) values ($1, $2)', [rows[0]?.version, rows[0]?.name]);
    }
    assert.equal((await test.call('GET', '/readyz', undefined, null)).status, 200);
  });

  it('serves Prometheus metrics to the admin key only', async () => {
    assert.equal((await test.call('GET', '/metrics')).status, 403);
    const response = await test.admin('GET', '/metrics');
    assert.equal(response.status, 200);
    assert.match(String(response.body), /tally_http_requests_total/);
  });

  it('describes every call in OpenAPI 3.1 and renders it at /docs', async () => {
    const response = await test.call('GET', '/openapi.json', undefined, null);
    assert.equal(response.status, 200);
    assert.equal(response.body.openapi, '3.1.0');
    const paths = response.body.paths;
    for (const [path, method] of [
      ['/v1/accounts/{id}', 'put'],
      ['/v1/accounts/{id}', 'get'],
      ['/v1/accounts/{id}/balance', 'get'],
      ['/v1/accounts/{id}/usage', 'post'],
      ['/v1/usage/batch', 'post'],
      ['/v1/accounts/{id}/holds', 'post'],
      ['/v1/holds/{hold_id}/capture', 'post'],
      ['/v1/holds/{hold_id}/void', 'post'],
      ['/v1/accounts/{id}/ledger', 'get'],
      ['/v1/accounts/{id}/grants', 'post'],
      ['/v1/accounts/{id}/adjustments', 'post'],
      ['/healthz', 'get'],
      ['/readyz', 'get'],
      ['/metrics', 'get'],
    ] as const) {
      assert.ok(paths[path]?.[method], `${method} ${path} is described`);
    }
    assert.equal(paths['/v1/accounts/{id}/usage'].post.requestBody.content['application/json'].schema.properties.amount.type, 'integer');
    assert.match(paths['/v1/accounts/{id}/usage'].post.responses['503'].description, /database_unavailable/);
    assert.match(
      paths['/v1/accounts/{id}/checkout'].post.responses['503'].description,
      /stripe_unavailable: .*; or database_unavailable: /,
    );
    // The codes every call may answer are described with it.
    const usage = paths['/v1/accounts/{id}/usage'].post;
    for (const status of ['401', '403', '413', '415', '429']) assert.ok(usage.responses[status], `usage documents ${status}`);
    assert.match(paths['/v1/accounts/{id}/checkout'].post.responses['502'].description, /stripe_error/);
    assert.match(paths['/v1/accounts/{id}/grants'].post.responses['400'].description, /grant_exceeds_limit/);
    assert.ok(paths['/v1/accounts/{id}/trial-eligibility'].post, 'trial eligibility by POST');
    assert.ok(response.body.components.securitySchemes.viewerKey);
    assert.deepEqual(
      paths['/v1/accounts/{id}/balance'].get.security.map((entry: object) => Object.keys(entry)[0]),
      ['appKey', 'adminKey', 'viewerKey'],
    );
    assert.equal(paths['/v1/holds/{hold_id}/capture'].post.requestBody.required, false, 'a bare capture takes the whole hold');
    assert.equal(paths['/healthz'].get.responses['503'], undefined, 'liveness never reads the database');
    const docs = await test.app.inject({ method: 'GET', url: '/docs/' });
    assert.equal(docs.statusCode, 200);
    assert.match(docs.body, /swagger/i);
  });

  it('serves the API explorer with a content security policy, never framed and never cached', async () => {
    // Proves the /docs pages carry the headers every other page of Tally does: a CSP (no
    // inline script from elsewhere), x-frame-options DENY against clickjacking, and no-store.
    for (const url of ['/docs/', '/docs/static/index.html', '/docs/json']) {
      const page = await test.app.inject({ method: 'GET', url });
      assert.ok(page.statusCode === 200 || page.statusCode === 302, `${url} ${page.statusCode}`);
      assert.equal(page.headers['x-frame-options'], 'DENY', url);
      assert.equal(page.headers['cache-control'], 'no-store', url);
      assert.equal(page.headers['x-content-type-options'], 'nosniff', url);
    }
    const html = await test.app.inject({ method: 'GET', url: '/docs/static/index.html' });
    assert.match(String(html.headers['content-security-policy']), /script-src 'self'/);
  });
});
