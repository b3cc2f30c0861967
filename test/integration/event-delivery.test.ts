import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { pino } from 'pino';
import { Webhook } from 'standardwebhooks';
import { EventDelivery } from '../../src/events/delivery.js';
import { createEndpoint } from '../../src/events/endpoints.js';
import type { Resolver } from '../../src/events/destinations.js';
import { alertPort } from '../../src/ops/rules.js';
import { createTestApp, fundedAccount, settleEvents, TestClock, testCatalog, type TestApp } from '../helpers/app.js';
import { createTestDatabase } from '../helpers/database.js';

// Delivery to the app's endpoints: a local receiver that fails, times out and recovers; order
// per account, signatures checked with the standardwebhooks package, the retry window on a
// virtual clock, re-enabling, a restart, and two workers that must never send one event twice.
// Delivering to 127.0.0.1 needs TALLY_EVENTS_ALLOW_PRIVATE (eventDestinations.allowPrivate);
// the refusals of private hosts are proven with an injected resolver, and nothing is ever sent
// to a private address but this file's own receiver.
interface Received {
  path: string;
  id: string;
  body: any;
}

type Behaviour = 'ok' | 'fail' | 'hang' | 'redirect' | 'reset';

let receiver: Server;
let base = '';
const received: Received[] = [];
const behaviour = new Map<string, Behaviour>();
const secrets = new Map<string, string>();
let badSignatures = 0;
let answerDelayMilliseconds = 0;
let connections = 0;
const hostHeaders: string[] = [];

/** Names as a test's DNS answers them: nothing here is ever connected to but this file's receiver. */
const names: Record<string, string[]> = {
  'public.test': ['93.184.215.14'],
  'localtest.me': ['127.0.0.1'],
  'mixed.test': ['93.184.215.14', '10.0.0.5'],
  'metadata.test': ['169.254.169.254'],
  'unique-local.test': ['fd12:3456::1'],
  'mapped.test': ['::ffff:10.1.2.3'],
  'receiver.test': ['127.0.0.1'],
};
const resolved: string[] = [];
const testResolver: Resolver = async (hostname) => {
  resolved.push(hostname);
  const addresses = names[hostname];
  if (addresses === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
  return addresses;
};
const allowPrivate = { allowPrivate: true, resolve: testResolver };

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
    hostHeaders.push(`${request.url} ${request.headers.host}`);
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      const path = request.url ?? '';
      const mode = behaviour.get(path) ?? 'ok';
      if (mode === 'hang') return; // never answers: Tally's timeout fires
      if (mode === 'reset') return void request.socket.destroy();
      if (mode === 'fail') return void response.writeHead(500).end();
      if (mode === 'redirect') return void response.writeHead(307, { location: `${base}/elsewhere` }).end();
      if (!verify(path, body, request)) badSignatures += 1;
      setTimeout(() => {
        received.push({ path, id: String(request.headers['webhook-id']), body: JSON.parse(body) });
        response.writeHead(204).end();
      }, answerDelayMilliseconds);
    });
  });
  receiver.on('connection', () => (connections += 1));
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
    test = await createTestApp({ eventDestinations: { resolve: testResolver } });
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

  it('refuses hosts that are or resolve to private, loopback, link-local, unique-local or unspecified addresses, in any spelling', async () => {
    const refused = [
      'https://10.0.0.1/hook',
      'https://172.16.5.4/hook',
      'https://192.168.1.1/hook',
      'https://100.64.0.1/hook',
      'https://169.254.169.254/latest/meta-data/',
      'https://0.0.0.0/hook',
      'https://127.0.0.1/hook',
      'https://0177.0.0.1/hook',
      'https://2130706433/hook',
      'https://0x7f.1/hook',
      'https://127.1/hook',
      'https://[::1]/hook',
      'https://[::]/hook',
      'https://[::ffff:127.0.0.1]/hook',
      'https://[::ffff:a9fe:a9fe]/hook',
      'https://[fd00::1]/hook',
      'https://[fe80::1]/hook',
      'https://localtest.me/hook',
      'https://mixed.test/hook',
      'https://metadata.test/hook',
      'https://unique-local.test/hook',
      'https://mapped.test/hook',
      'http://127.0.0.1:9/hook',
      'http://localtest.me/hook',
    ];
    for (const url of refused) {
      const answer = await test.admin('POST', '/v1/admin/webhook-endpoints', { url });
      assert.equal(answer.status, 400, url);
      assert.equal(answer.body.error.code, 'invalid_request', url);
      assert.equal(answer.body.error.field, 'url', url);
    }
    const { rows } = await test.database.db.query('select count(*)::int as count from webhook_endpoints');
    assert.equal(rows[0]?.count, 0, 'nothing written for a refusal');
    // A public host is accepted, and so is a name that does not resolve yet (each delivery checks it).
    for (const url of ['https://public.test/hook', 'https://93.184.215.14/hook', 'https://not-yet.test/hook']) {
      const answer = await test.admin('POST', '/v1/admin/webhook-endpoints', { url });
      assert.equal(answer.status, 201, url);
      await test.admin('DELETE', `/v1/admin/webhook-endpoints/${answer.body.id}`);
    }
  });

  it('allows private hosts, and plain http to loopback only, with TALLY_EVENTS_ALLOW_PRIVATE', async () => {
    for (const url of ['https://10.0.0.1/hook', 'https://localtest.me/hook', 'http://localtest.me:8080/hook', 'http://[::1]:8080/hook'])
      assert.equal((await createEndpoint(test.database.db, { url }, allowPrivate)).url, url);
    await assert.rejects(createEndpoint(test.database.db, { url: 'http://10.0.0.1/hook' }, allowPrivate), { code: 'invalid_request' });
    await assert.rejects(createEndpoint(test.database.db, { url: 'http://public.test/hook' }, allowPrivate), { code: 'invalid_request' });
    await test.database.db.query('delete from webhook_endpoints');
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
    test = await createTestApp({
      eventDeliveryOptions: { timeoutMilliseconds: 1000, retryBaseSeconds: 60 },
      eventDestinations: allowPrivate,
    });
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
    assert.equal(flaky.oldest_failing.last_error, 'timeout');
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

  it('resolves a name once per attempt and connects to the address it checked, with the name as Host', async () => {
    const path = '/named';
    const port = new URL(base).port;
    const created = await test.admin('POST', '/v1/admin/webhook-endpoints', { url: `http://receiver.test:${port}${path}` });
    assert.equal(created.status, 201);
    secrets.set(path, created.body.secret);
    await fundedAccount(test, 'dl_named', 5);
    await settleEvents(test);
    resolved.length = 0;
    hostHeaders.length = 0;
    await test.parts.eventDelivery.deliverOnce();
    assert.equal(at(path).length, 1, 'delivered through the name the test resolver answers');
    assert.deepEqual(resolved, ['receiver.test'], 'one lookup for one attempt');
    assert.deepEqual(
      hostHeaders.filter((line) => line.startsWith(path)),
      [`${path} receiver.test:${port}`],
    );
    await test.admin('DELETE', `/v1/admin/webhook-endpoints/${created.body.id}`);
  });

  it('shows only an error class: a reset and a closed port read the same', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const closedPort = (closed.address() as { port: number }).port;
    await new Promise((resolve) => closed.close(resolve));
    await register(test, '/reset');
    behaviour.set('/reset', 'reset');
    const created = await test.admin('POST', '/v1/admin/webhook-endpoints', { url: `http://127.0.0.1:${closedPort}/nothing` });
    await fundedAccount(test, 'dl_classes', 5);
    await settleEvents(test);
    await test.parts.eventDelivery.deliverOnce();
    const listed = (await test.admin('GET', '/v1/admin/webhook-endpoints')).body.endpoints;
    const errors = listed
      .filter((endpoint: any) => endpoint.url.endsWith('/reset') || endpoint.url.endsWith('/nothing'))
      .map((endpoint: any) => endpoint.oldest_failing?.last_error);
    assert.deepEqual(errors, ['connection_failed', 'connection_failed']);
    for (const endpoint of listed) await test.admin('DELETE', `/v1/admin/webhook-endpoints/${endpoint.id}`);
    assert.equal(created.status, 201);
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
      () =>
        new EventDelivery(test.database.db, logger, alertPort(testCatalog()), {
          clock: test.clock.now,
          timeoutMilliseconds: 2000,
          destinations: allowPrivate,
        }),
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
    const first = await createTestApp({ clock, database, eventDestinations: allowPrivate });
    await register(first, '/restart');
    behaviour.set('/restart', 'fail');
    await fundedAccount(first, 'dl_restart', 7);
    await settleEvents(first);
    await first.parts.eventDelivery.deliverOnce();
    await first.close(); // the process goes away; the database stays
    const second = await createTestApp({ database, clock, eventDestinations: allowPrivate });
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

describe('each delivery checks its destination again', () => {
  let test: TestApp;
  const answers = new Map<string, string[]>();
  const rebinding: Resolver = async (hostname) => {
    const addresses = answers.get(hostname);
    if (addresses === undefined) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return addresses;
  };
  before(async () => {
    test = await createTestApp({ eventDestinations: { resolve: rebinding } });
  });
  after(async () => {
    await test.close();
  });

  it('sends nothing to a name that resolved to a public address at registration and to loopback at delivery (DNS rebinding)', async () => {
    const port = new URL(base).port;
    answers.set('rebind.test', ['93.184.215.14']);
    const created = await test.admin('POST', '/v1/admin/webhook-endpoints', { url: `https://rebind.test:${port}/rebound` });
    assert.equal(created.status, 201);
    // The name now points at this machine, where this file's receiver listens on that port.
    answers.set('rebind.test', ['127.0.0.1']);
    await fundedAccount(test, 'dl_rebind', 5);
    await settleEvents(test);
    const before = connections;
    await test.parts.eventDelivery.deliverOnce();
    assert.equal(connections, before, 'no connection reached the receiver');
    const endpoint = (await test.admin('GET', `/v1/admin/webhook-endpoints/${created.body.id}`)).body;
    assert.equal(endpoint.oldest_failing.last_error, 'address_not_allowed');
    assert.equal(endpoint.oldest_failing.attempts, 1);
    // A name that stops resolving is a class of its own, with the resolver's words kept out.
    answers.delete('rebind.test');
    test.clock.advanceSeconds(3600);
    await test.parts.eventDelivery.deliverOnce();
    const again = (await test.admin('GET', `/v1/admin/webhook-endpoints/${created.body.id}`)).body;
    assert.equal(again.oldest_failing.last_error, 'dns_failed');
    assert.equal(connections, before);
    // A row written before error classes shows its class, not the network's words.
    await test.database.db.query(`update event_deliveries set last_error = 'connect ECONNREFUSED 10.0.0.7:5432' where endpoint_id = $1`, [
      Number(created.body.id.slice(3)),
    ]);
    const legacy = (await test.admin('GET', `/v1/admin/webhook-endpoints/${created.body.id}`)).body;
    assert.equal(legacy.oldest_failing.last_error, 'connection_failed');
  });
});
