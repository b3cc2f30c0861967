import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Webhook } from 'standardwebhooks';
import { EventDelivery } from '../../src/events/delivery.js';
import { alertPort } from '../../src/ops/rules.js';
import { createTestApp, fundedAccount, settleEvents, TestClock, testCatalog, type TestApp } from '../helpers/app.js';
import { createTestDatabase } from '../helpers/database.js';

// Delivery to the app's endpoints: a local receiver that fails, times out and recovers; order
// per account, signatures checked with the standardwebhooks package, the retry window on a
// virtual clock, re-enabling, a restart, and two workers that must never send one event twice.
interface Received {
  path: string;
  id: string;
  body: any;
}

type Behaviour = 'ok' | 'fail' | 'hang' | 'redirect';

let receiver: Server;
let base = '';
const received: Received[] = [];
const behaviour = new Map<string, Behaviour>();
const secrets = new Map<string, string>();
let badSignatures = 0;
let answerDelayMilliseconds = 0;

function verify(path: string, body: string, request: IncomingMessage): boolean {
  const secret = secrets.get(path);
  if (secret === undefined) return false;
  try {
    new Webhook(secret).verify(body, request.headers as Record<string, string>);
    return true;
  } catch {
    return false;
  }
}

before(async () => {
  receiver = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const path = request.url ?? '';
      const mode = behaviour.get(path) ?? 'ok';
      if (mode === 'hang') return; // never answers: Tally's timeout fires
      if (mode === 'fail') return void response.writeHead(500).end();
      if (mode === 'redirect') return void response.writeHead(307, { location: `${base}/elsewhere` }).end();
      if (!verify(path, body, request)) badSignatures += 1;
      setTimeout(() => {
        received.push({ path, id: String(request.headers['webhook-id']), body: JSON.parse(body) });
        response.writeHead(204).end();
      }, answerDelayMilliseconds);
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const address = receiver.address();
  base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
});

after(async () => {
  receiver.closeAllConnections();
  await new Promise((resolve) => receiver.close(resolve));
});

async function register(test: TestApp, path: string, eventTypes?: string[]): Promise<string> {
  const created = await test.admin('POST', '/v1/admin/webhook-endpoints', {
    url: `${base}${path}`,
    ...(eventTypes === undefined ? {} : { event_types: eventTypes }),
  });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  assert.match(created.body.secret, /^whsec_/);
  secrets.set(path, created.body.secret);
  return created.body.id;
}

const at = (path: string) => received.filter((item) => item.path === path);

/** Runs delivery passes, moving the clock past every retry, until nothing is left or `rounds` ran out. */
async function drain(test: TestApp, rounds = 50, stepSeconds = 3600): Promise<void> {
  for (let round = 0; round < rounds; round += 1) {
    await settleEvents(test);
    await test.parts.eventDelivery.deliverOnce();
    const { rows } = await test.database.db.query<{ count: number }>(
      `select (select count(*) from event_deliveries d join webhook_endpoints w on w.id = d.endpoint_id where d.delivered_at is null and w.status = 'enabled')::int
         + (select count(*) from events where sequence is null)::int as count`,
    );
    if (rows[0]?.count === 0) return;
    test.clock.advanceSeconds(stepSeconds);
  }
}

describe('registering endpoints', () => {
  let test: TestApp;
  before(async () => {
    test = await createTestApp();
  });
  after(async () => {
    await test.close();
  });

  it('refuses a URL that is not https (http only for this machine), an unknown event type, and the app key', async () => {
    for (const url of [
      'http://example.com/hook',
      'ftp://127.0.0.1/hook',
      'not a url',
      'https://user:pass@example.com/hook',
      'javascript:alert(1)',
    ]) {
      const answer = await test.admin('POST', '/v1/admin/webhook-endpoints', { url });
      assert.equal(answer.status, 400, url);
      assert.equal(answer.body.error.field, 'url');
    }
    assert.equal(
      (await test.admin('POST', '/v1/admin/webhook-endpoints', { url: 'https://example.com/hook', event_types: ['no.such'] })).status,
      400,
    );
    assert.equal((await test.call('POST', '/v1/admin/webhook-endpoints', { url: 'https://example.com/hook' })).status, 403);
    assert.equal((await test.admin('GET', '/v1/admin/endpoints')).status, 404);
    const { rows } = await test.database.db.query('select count(*)::int as count from webhook_endpoints');
    assert.equal(rows[0]?.count, 0, 'nothing written for a refusal');
  });

  it('shows the secret once, lists and deletes; unknown ids are 404', async () => {
    const created = await test.admin('POST', '/v1/admin/webhook-endpoints', {
      url: 'https://example.com/hook',
      event_types: ['balance.low'],
    });
    assert.equal(created.status, 201);
    const listed = await test.admin('GET', '/v1/admin/webhook-endpoints');
    assert.equal(listed.body.endpoints.length, 1);
    assert.equal(listed.body.endpoints[0].secret, undefined, 'the secret is never shown again');
    assert.equal(listed.body.endpoints[0].status, 'enabled');
    const one = await test.admin('GET', `/v1/admin/webhook-endpoints/${created.body.id}`);
    assert.deepEqual(one.body.event_types, ['balance.low']);
    for (const [method, suffix] of [
      ['GET', ''],
      ['DELETE', ''],
      ['POST', '/enable'],
    ] as const) {
      for (const id of ['we_999', 'nope'])
        assert.equal((await test.admin(method, `/v1/admin/webhook-endpoints/${id}${suffix}`)).status, 404);
    }
    assert.deepEqual((await test.admin('DELETE', `/v1/admin/webhook-endpoints/${created.body.id}`)).body, {
      id: created.body.id,
      deleted: true,
    });
    assert.equal((await test.admin('GET', `/v1/admin/webhook-endpoints/${created.body.id}`)).status, 404);
  });
});

describe('delivering', () => {
  let test: TestApp;
  before(async () => {
    test = await createTestApp({ eventDeliveryOptions: { timeoutMilliseconds: 1000, retryBaseSeconds: 60 } });
  });
  after(async () => {
    await test.close();
  });

  it('keeps order per account through failures, timeouts and recovery; every event arrives, signed', async () => {
    await register(test, '/flaky');
    await register(test, '/only-low', ['balance.depleted']);
    for (let round = 0; round < 3; round += 1) {
      await fundedAccount(test, 'dl_a', 10);
      await fundedAccount(test, 'dl_b', 10);
    }
    await test.call('POST', '/v1/accounts/dl_a/usage', { amount: 30, idempotency_key: 'dl-a-all' });
    behaviour.set('/flaky', 'fail');
    await settleEvents(test);
    await test.parts.eventDelivery.deliverOnce();
    behaviour.set('/flaky', 'hang');
    test.clock.advanceSeconds(3600);
    await test.parts.eventDelivery.deliverOnce();
    assert.equal(at('/flaky').length, 0);
    const state = await test.admin('GET', '/v1/admin/webhook-endpoints');
    const flaky = state.body.endpoints.find((endpoint: any) => endpoint.url.endsWith('/flaky'));
    assert.equal(flaky.oldest_failing.attempts, 2);
    assert.match(flaky.oldest_failing.last_error, /abort|timeout/i);
    behaviour.set('/flaky', 'ok');
    await drain(test);
    const all = (await test.call('GET', '/v1/events?limit=500')).body.events;
    // At least once: a delivery whose answer came after its timeout (a loaded machine) is sent again.
    assert.deepEqual(
      [...new Set(at('/flaky').map((item) => item.body.sequence))].sort((a, b) => a - b),
      all.map((event: any) => event.sequence),
      'every event',
    );
    for (const account of ['dl_a', 'dl_b']) {
      const order = at('/flaky')
        .filter((item) => item.body.account_id === account)
        .map((item) => item.body.sequence);
      assert.deepEqual(
        order,
        [...order].sort((a, b) => a - b),
        `order of ${account}`,
      );
    }
    assert.deepEqual([...new Set(at('/only-low').map((item) => item.id))].length, 1);
    assert.ok(
      at('/only-low').every((item) => item.body.type === 'balance.depleted'),
      'only the types asked for',
    );
    assert.equal(badSignatures, 0);
    assert.equal(at('/flaky')[0]?.id, at('/flaky')[0]?.body.id, 'webhook-id is the event id');
  });

  it('treats a redirect as a failure and never follows it', async () => {
    await register(test, '/moved');
    await fundedAccount(test, 'dl_redirect', 5);
    behaviour.set('/moved', 'redirect');
    await settleEvents(test);
    await test.parts.eventDelivery.deliverOnce();
    assert.equal(received.filter((item) => item.path === '/elsewhere').length, 0);
    const listed = await test.admin('GET', '/v1/admin/webhook-endpoints');
    const moved = listed.body.endpoints.find((endpoint: any) => endpoint.url.endsWith('/moved'));
    assert.equal(moved.oldest_failing.last_error, 'HTTP 307');
    await test.admin('DELETE', `/v1/admin/webhook-endpoints/${moved.id}`);
  });

  it('disables an endpoint after 3 days of failures with an alert; enabling it resumes where it stopped, in order', async () => {
    const id = await register(test, '/down');
    behaviour.set('/down', 'fail');
    await fundedAccount(test, 'dl_down', 5);
    await fundedAccount(test, 'dl_down', 5);
    let status = 'enabled';
    await settleEvents(test);
    for (let hour = 0; hour < 24 * 4 && status === 'enabled'; hour += 1) {
      await test.parts.eventDelivery.deliverOnce();
      status = (await test.admin('GET', `/v1/admin/webhook-endpoints/${id}`)).body.status;
      test.clock.advanceSeconds(3600);
    }
    const endpoint = (await test.admin('GET', `/v1/admin/webhook-endpoints/${id}`)).body;
    assert.equal(endpoint.status, 'disabled');
    const failingHours = (Date.parse(endpoint.disabled_at) - Date.parse(endpoint.oldest_failing.first_failed_at)) / 3600_000;
    assert.ok(failingHours >= 72 && failingHours < 80, `disabled after ${failingHours} hours`);
    const alerts = (await test.admin('GET', '/v1/admin/alerts')).body.alerts;
    assert.ok(alerts.some((alert: any) => alert.kind === 'webhook_endpoint_disabled' && alert.details.endpoint_id === id));
    // Disabled: nothing is attempted, even once the receiver is back, until an operator acts.
    behaviour.set('/down', 'ok');
    await fundedAccount(test, 'dl_down', 5);
    await drain(test, 3);
    assert.equal(at('/down').length, 0);
    const enabled = await test.admin('POST', `/v1/admin/webhook-endpoints/${id}/enable`);
    assert.equal(enabled.body.status, 'enabled');
    await drain(test);
    const mine = at('/down')
      .filter((item) => item.body.account_id === 'dl_down')
      .map((item) => item.body.sequence);
    const expected = (await test.call('GET', '/v1/events?account_id=dl_down')).body.events.map((event: any) => event.sequence);
    assert.deepEqual(mine, expected);
  });

  it('two delivery workers never send one event twice', async () => {
    const path = '/shared';
    await register(test, path);
    answerDelayMilliseconds = 20;
    for (let index = 0; index < 12; index += 1) await fundedAccount(test, `dl_shared_${index % 4}`, 5);
    const logger = pino({ level: 'silent' });
    await settleEvents(test);
    const workers = [0, 1].map(
      () => new EventDelivery(test.database.db, logger, alertPort(testCatalog()), { clock: test.clock.now, timeoutMilliseconds: 2000 }),
    );
    for (let pass = 0; pass < 20; pass += 1) await Promise.all(workers.map((worker) => worker.deliverOnce()));
    answerDelayMilliseconds = 0;
    const ids = at(path).map((item) => item.id);
    assert.equal(new Set(ids).size, ids.length, 'no event sent twice');
    const expected = (await test.call('GET', '/v1/events?limit=500')).body.events.filter((event: any) => event.sequence > 0).length;
    const { rows } = await test.database.db.query<{ count: number }>(
      `select count(*)::int as count from event_deliveries d join webhook_endpoints w on w.id = d.endpoint_id where w.url like '%/shared'`,
    );
    assert.equal(ids.length, rows[0]?.count);
    assert.ok(expected >= ids.length);
  });
});

describe('a restart between a change and its delivery', () => {
  it('delivers the event after the restart, once the endpoint answers', async () => {
    const clock = new TestClock();
    const database = await createTestDatabase();
    const first = await createTestApp({ clock, database });
    await register(first, '/restart');
    behaviour.set('/restart', 'fail');
    await fundedAccount(first, 'dl_restart', 7);
    await settleEvents(first);
    await first.parts.eventDelivery.deliverOnce();
    await first.close(); // the process goes away; the database stays
    const second = await createTestApp({ database, clock });
    try {
      behaviour.set('/restart', 'ok');
      clock.advanceSeconds(60);
      await drain(second);
      const got = at('/restart');
      assert.deepEqual(
        got.map((item) => item.body.type),
        ['grant.created'],
      );
      assert.equal(got[0]?.body.data.amount, 7);
    } finally {
      await second.close();
      await database.close();
    }
  });
});
