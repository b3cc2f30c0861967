import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { adminKey, createTestApp, fundedAccount, ledgerFacts, type TestApp } from '../helpers/app.js';

// Proves: bad input and Fastify's own refusals are answered in SPEC's error shape with a
// product code and the field named (never 500, never JavaScript's words); the admin key works
// on the app's calls; grants and sums stay within the safe integer range; replays say so; a
// bare capture takes the whole hold while amount 0 releases it all.
let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

/** A request sent over a socket exactly as written: no client resolves its path. */
function rawOverSocket(port: number, method: string, path: string, body: string): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(
      { host: '127.0.0.1', port, method, path, headers: { authorization: `Bearer ${adminKey}`, 'content-type': 'application/json' } },
      (response) => {
        let text = '';
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }));
      },
    );
    request.on('error', reject);
    request.end(body);
  });
}

/** A raw request through Fastify's HTTP stack, for bodies and headers the JSON helper cannot send. */
async function raw(
  method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH',
  url: string,
  payload?: string,
  headers: Record<string, string> = {},
) {
  const response = await test.app.inject({ method, url, payload, headers: { authorization: `Bearer ${adminKey}`, ...headers } });
  return {
    status: response.statusCode,
    headers: response.headers,
    body: response.headers['content-type']?.toString().includes('json') ? response.json() : response.body,
  };
}

describe('the admin key on the app calls', () => {
  // Proves: usage, holds, capture, void and batches made with the admin key succeed (they
  // answered 500: actor admin without a reason broke the admin_has_reason check).
  it('spends, holds, captures, voids and batches, recorded as the app', async () => {
    await fundedAccount(test, 'adm-app-1', 1000);
    const usage = await test.admin('POST', '/v1/accounts/adm-app-1/usage', { amount: 10, idempotency_key: 'adm-u1' });
    assert.equal(usage.status, 200, JSON.stringify(usage.body));
    const hold = await test.admin('POST', '/v1/accounts/adm-app-1/holds', { amount: 20, idempotency_key: 'adm-h1' });
    assert.equal(hold.status, 201, JSON.stringify(hold.body));
    const capture = await test.admin('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 5 });
    assert.equal(capture.status, 200, JSON.stringify(capture.body));
    const second = await test.admin('POST', '/v1/accounts/adm-app-1/holds', { amount: 20, idempotency_key: 'adm-h2' });
    const voided = await test.admin('POST', `/v1/holds/${second.body.hold_id}/void`);
    assert.equal(voided.status, 200, JSON.stringify(voided.body));
    const batch = await test.admin('POST', '/v1/usage/batch', {
      events: [{ account_id: 'adm-app-1', amount: 1, idempotency_key: 'adm-b1' }],
    });
    assert.equal(batch.status, 200);
    assert.equal(batch.body.results[0].status, 200, JSON.stringify(batch.body));
    const { rows } = await test.database.db.query<{ actor: string }>(
      `select distinct actor from entries where account_id = 'adm-app-1' and kind <> 'grant'`,
    );
    assert.deepEqual(
      rows.map((row) => row.actor),
      ['app'],
    );
  });
});

describe('U+0000 in input', () => {
  // Proves: a NUL character anywhere in a JSON string or key is 400 invalid_request naming the
  // field (it answered 500 from PostgreSQL), and nothing is written.
  it('is refused with the field named, in bodies, keys and queries', async () => {
    await fundedAccount(test, 'nul-1', 100);
    const before = await ledgerFacts(test, 'nul-1');
    const cases: [string, string, unknown, string][] = [
      ['PUT', '/v1/accounts/nul-1', { name: 'a\u0000b' }, 'name'],
      ['PUT', '/v1/accounts/nul-1', { metadata: { plan: 'x\u0000' } }, 'metadata.plan'],
      ['PUT', '/v1/accounts/nul-1', { metadata: { 'k\u0000': 'x' } }, 'metadata.k\u0000'],
      ['POST', '/v1/accounts/nul-1/usage', { amount: 1, idempotency_key: 'nul-u1', description: 'tokens\u0000' }, 'description'],
      [
        'POST',
        '/v1/usage/batch',
        { events: [{ account_id: 'nul-1', amount: 1, idempotency_key: 'nul-b1', metadata: { m: '\u0000' } }] },
        'events.0.metadata.m',
      ],
      ['POST', '/v1/accounts/nul-1/grants', { amount: 1, source: 'promo', reason: 'why\u0000', idempotency_key: 'nul-g1' }, 'reason'],
    ];
    for (const [method, url, body, field] of cases) {
      const response = await test.admin(method as 'PUT', url, body);
      assert.equal(response.status, 400, `${url} ${JSON.stringify(response.body)}`);
      assert.equal(response.body.error.code, 'invalid_request');
      assert.equal(response.body.error.field, field);
    }
    const query = await test.admin('GET', '/v1/admin/webhook-events?type=a%00b');
    assert.equal(query.status, 400, JSON.stringify(query.body));
    assert.equal(query.body.error.field, 'type');
    const parameter = await test.admin('POST', '/v1/admin/webhook-events/evt_%00/replay');
    assert.equal(parameter.status, 400, JSON.stringify(parameter.body));
    assert.equal(parameter.body.error.field, 'event_id');
    assert.deepEqual(await ledgerFacts(test, 'nul-1'), before);
    const account = await test.call('GET', '/v1/accounts/nul-1');
    assert.equal(account.body.name, null);
  });
});

describe('deeply nested bodies', () => {
  // Proves: a body nested beyond 32 levels is 400 invalid_request naming the body before it is
  // parsed (it answered 500 from a stack overflow), nothing is written, and brackets inside
  // strings do not count.
  it('are refused with the depth named, and strings full of brackets still pass', async () => {
    await fundedAccount(test, 'deep-1', 10);
    const before = await ledgerFacts(test, 'deep-1');
    const bodies = [
      `{"metadata":{"a":${'['.repeat(30_000)}${']'.repeat(30_000)}}}`,
      `{"amount":1,"idempotency_key":"deep-u1","metadata":${'{"a":'.repeat(10_000)}1${'}'.repeat(10_000)}}`,
      `{"events":[${'['.repeat(40)}${']'.repeat(40)}]}`,
    ];
    const urls = ['/v1/accounts/deep-1', '/v1/accounts/deep-1/usage', '/v1/usage/batch'];
    for (const [index, body] of bodies.entries()) {
      const response = await raw(index === 0 ? 'PUT' : 'POST', urls[index]!, body, { 'content-type': 'application/json' });
      assert.equal(response.status, 400, `${urls[index]} ${JSON.stringify(response.body)}`);
      assert.equal(response.body.error.code, 'invalid_request');
      assert.equal(response.body.error.field, 'body');
      assert.match(response.body.error.message, /nested deeper than 32/);
    }
    assert.deepEqual(await ledgerFacts(test, 'deep-1'), before);
    const brackets = '[{'.repeat(100);
    const spent = await raw(
      'POST',
      '/v1/accounts/deep-1/usage',
      JSON.stringify({ amount: 1, idempotency_key: 'deep-u2', description: `${brackets} \\" ${brackets}` }),
      { 'content-type': 'application/json' },
    );
    assert.equal(spent.status, 200, JSON.stringify(spent.body));
  });
});

describe('dot-segment account ids', () => {
  // Proves: `.` and `..` are refused as account ids (they fit SPEC's characters, but a URL
  // that names them is rewritten by clients and proxies into another path), in the path, encoded
  // or not, and in a batch; ids that only contain dots among other characters stay valid.
  it('are 400 invalid_request naming the id, and nothing is written', async () => {
    // Sent as written (a raw client, `curl --path-as-is`): clients that resolve dot segments
    // never send them, and Fastify's inject resolves them too, so this goes over a socket.
    await test.app.listen({ port: 0, host: '127.0.0.1' });
    const { port } = test.app.server.address() as AddressInfo;
    for (const id of ['.', '..', '%2E%2E']) {
      const created = await rawOverSocket(port, 'PUT', `/v1/accounts/${id}`, '{}');
      assert.equal(created.status, 400, `${id} ${JSON.stringify(created.body)}`);
      assert.equal(created.body.error.code, 'invalid_request');
      assert.equal(created.body.error.field, 'id');
    }
    const batch = await test.call('POST', '/v1/usage/batch', { events: [{ account_id: '..', amount: 1, idempotency_key: 'dots-1' }] });
    assert.equal(batch.status, 400, JSON.stringify(batch.body));
    assert.equal(batch.body.error.field, 'events.0.account_id');
    const accounts = await test.database.db.pool.query(`select id from accounts where id ~ '^[.]+$'`);
    assert.deepEqual(accounts.rows, []);
    for (const id of ['...', 'a..b', '.hidden', 'v1.2']) {
      const created = await test.call('PUT', `/v1/accounts/${id}`, {});
      assert.equal(created.status, 200, `${id} ${JSON.stringify(created.body)}`);
    }
  });
});

describe("Fastify's own refusals", () => {
  // Proves: account ids of 101 to 128 characters (valid by SPEC) work, and a longer path
  // segment is 414 in SPEC's shape (it was Fastify's own 414 at 101 characters).
  it('accepts 128-character account ids and answers 414 uri_too_long past any id', async () => {
    const id = 'a'.repeat(128);
    const created = await test.call('PUT', `/v1/accounts/${id}`, {});
    assert.equal(created.status, 200, JSON.stringify(created.body));
    assert.equal((await test.call('GET', `/v1/accounts/${id}/balance`)).body.account_id, id);
    const tooLong = await test.call('GET', `/v1/accounts/${'a'.repeat(300)}`);
    assert.equal(tooLong.status, 414);
    assert.equal(tooLong.body.error.code, 'uri_too_long');
  });

  // Proves: unknown routes, wrong methods, non-JSON bodies and oversized bodies all answer
  // {error: {code, message}} with the SPEC's codes.
  it('answers 404 not_found, 405 method_not_allowed, 415 unsupported_media_type and 413 payload_too_large', async () => {
    const unknown = await raw('GET', '/v1/nowhere');
    assert.equal(unknown.status, 404);
    assert.equal(unknown.body.error.code, 'not_found');
    const wrongMethod = await raw('DELETE', '/v1/accounts/x/balance');
    assert.equal(wrongMethod.status, 405);
    assert.equal(wrongMethod.body.error.code, 'method_not_allowed');
    assert.match(String(wrongMethod.headers.allow), /GET/);
    const patch = await raw('PATCH', '/v1/accounts/x');
    assert.equal(patch.status, 405);
    const text = await raw('POST', '/v1/accounts/x/usage', 'amount=1', { 'content-type': 'text/plain' });
    assert.equal(text.status, 415);
    assert.equal(text.body.error.code, 'unsupported_media_type');
    const form = await raw('POST', '/v1/accounts/x/usage', 'amount=1', { 'content-type': 'application/x-www-form-urlencoded' });
    assert.equal(form.status, 415);
    assert.equal(form.body.error.code, 'unsupported_media_type');
    const large = await raw(
      'POST',
      '/v1/accounts/x/usage',
      JSON.stringify({ amount: 1, idempotency_key: 'k', description: 'x'.repeat(200_000) }),
      { 'content-type': 'application/json' },
    );
    assert.equal(large.status, 413);
    assert.equal(large.body.error.code, 'payload_too_large');
    const broken = await raw('POST', '/v1/accounts/x/usage', '{"amount": ', { 'content-type': 'application/json' });
    assert.equal(broken.status, 400);
    assert.deepEqual(broken.body.error, { code: 'invalid_request', message: 'body: not valid JSON', field: 'body' });
  });

  // Proves: validation messages say what was expected, naming the field, without JavaScript's
  // words ("received NaN", "expected int").
  it('explains what a field expects', async () => {
    await fundedAccount(test, 'msg-1', 10);
    const limit = await test.call('GET', '/v1/accounts/msg-1/ledger?limit=abc');
    assert.equal(limit.status, 400);
    assert.equal(limit.body.error.message, 'limit: expected a number');
    const fraction = await test.call('POST', '/v1/accounts/msg-1/usage', { amount: 1.5, idempotency_key: 'msg-u1' });
    assert.equal(fraction.body.error.message, 'amount: expected an integer');
    const zero = await test.call('POST', '/v1/accounts/msg-1/usage', { amount: 0, idempotency_key: 'msg-u2' });
    assert.equal(zero.body.error.message, 'amount: must be more than 0');
    const text = await test.call('POST', '/v1/accounts/msg-1/usage', { amount: 'ten', idempotency_key: 'msg-u3' });
    assert.equal(text.body.error.message, 'amount: expected a number');
    const expiry = await test.admin('POST', '/v1/accounts/msg-1/grants', {
      amount: 1,
      source: 'promo',
      reason: 'r',
      idempotency_key: 'msg-g1',
      expires_at: 'tomorrow',
    });
    assert.match(expiry.body.error.message, /^expires_at: expected an ISO 8601 date-time/);
    const source = await test.admin('POST', '/v1/accounts/msg-1/grants', {
      amount: 1,
      source: 'gift',
      reason: 'r',
      idempotency_key: 'msg-g2',
    });
    assert.equal(source.body.error.message, 'source: must be one of "promo", "admin"');
    for (const response of [limit, fraction, zero, text, expiry, source]) {
      assert.doesNotMatch(response.body.error.message, /NaN|received|Invalid input|expected int\b|[<>]=?\d/);
    }
  });
});

describe('limits on credits', () => {
  // Proves: an admin grant above the catalog's admin_grant_credits_max is 400
  // grant_exceeds_limit and writes nothing.
  it('refuses a grant above limits.admin_grant_credits_max', async () => {
    await fundedAccount(test, 'lim-1', 0);
    const response = await test.admin('POST', '/v1/accounts/lim-1/grants', {
      amount: 1_000_001,
      source: 'promo',
      reason: 'too much',
      idempotency_key: 'lim-g1',
    });
    assert.equal(response.status, 400);
    assert.equal(response.body.error.code, 'grant_exceeds_limit');
    assert.equal(response.body.error.limit, 1_000_000);
    assert.equal((await ledgerFacts(test, 'lim-1')).entry_count, 0);
  });

  // Proves: where a grant would take a balance past the safe integer range, the answer is 400
  // balance_limit_exceeded (it was 500 "invariant broken"), and the credit history and metrics
  // still answer when a day's sum over all accounts passes the safe range (they answered 500).
  it('answers balance_limit_exceeded and keeps every sum answerable', async () => {
    const big = await createTestApp({ grantCreditsMax: Number.MAX_SAFE_INTEGER });
    try {
      const half = 5_000_000_000_000_000;
      for (const id of ['huge-1', 'huge-2']) {
        await fundedAccount(big, id, half);
      }
      const over = await big.admin('POST', '/v1/accounts/huge-1/grants', {
        amount: half,
        source: 'promo',
        reason: 'overflow',
        idempotency_key: 'huge-g2',
      });
      assert.equal(over.status, 400, JSON.stringify(over.body));
      assert.equal(over.body.error.code, 'balance_limit_exceeded');
      assert.equal((await ledgerFacts(big, 'huge-1')).available, half);
      const history = await big.admin('GET', `/v1/admin/credit-history?days=1&until=${big.clock.now().toISOString().slice(0, 10)}`);
      assert.equal(history.status, 200, JSON.stringify(history.body));
      assert.equal(history.body.days[0].granted, '10000000000000000');
      const metrics = await big.admin('GET', '/metrics');
      assert.equal(metrics.status, 200);
    } finally {
      await big.close();
    }
  });
});

describe('replays and captures', () => {
  // Proves: a replayed refusal carries replayed: true in its error object, and every replay
  // (refused or not) has the Idempotent-Replayed: true header; a first answer has neither.
  it('marks replayed answers, refusals included', async () => {
    await fundedAccount(test, 'rep-1', 10);
    const body = JSON.stringify({ amount: 50, idempotency_key: 'rep-u1' });
    const headers = { 'content-type': 'application/json' };
    const first = await raw('POST', '/v1/accounts/rep-1/usage', body, headers);
    assert.equal(first.status, 402);
    assert.equal(first.body.error.replayed, undefined);
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const again = await raw('POST', '/v1/accounts/rep-1/usage', body, headers);
    assert.equal(again.status, 402);
    assert.equal(again.body.error.replayed, true);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    const spend = JSON.stringify({ amount: 1, idempotency_key: 'rep-u2' });
    await raw('POST', '/v1/accounts/rep-1/usage', spend, headers);
    const replayedSpend = await raw('POST', '/v1/accounts/rep-1/usage', spend, headers);
    assert.equal(replayedSpend.body.replayed, true);
    assert.equal(replayedSpend.headers['idempotent-replayed'], 'true');
  });

  // Proves: capture {"amount": 0} captures nothing and releases the hold, and a capture without
  // a body captures the whole hold (it answered 400 "amount: required").
  it('captures nothing with amount 0 and everything without a body', async () => {
    await fundedAccount(test, 'cap-1', 100);
    const first = await test.call('POST', '/v1/accounts/cap-1/holds', { amount: 30, idempotency_key: 'cap-h1' });
    const zero = await test.call('POST', `/v1/holds/${first.body.hold_id}/capture`, { amount: 0 });
    assert.equal(zero.status, 200);
    assert.deepEqual(
      { captured: zero.body.captured, released: zero.body.released, available: zero.body.available },
      { captured: 0, released: 30, available: 100 },
    );
    const second = await test.call('POST', `/v1/accounts/cap-1/holds`, { amount: 40, idempotency_key: 'cap-h2' });
    const whole = await test.call('POST', `/v1/holds/${second.body.hold_id}/capture`);
    assert.equal(whole.status, 200, JSON.stringify(whole.body));
    assert.deepEqual(
      { captured: whole.body.captured, released: whole.body.released, available: whole.body.available },
      { captured: 40, released: 0, available: 60 },
    );
  });
});
