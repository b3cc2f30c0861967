import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { deliverAlerts, parseSinks } from '../../src/ops/alert-sinks.js';
import { raiseAlert, resolveAlert } from '../../src/ops/alerts.js';
import { checkWebhookFailureRate } from '../../src/ops/rules.js';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { checkoutSession, deliver, dispute, event, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

// Alerts go to a local receiver that checks the exact Slack, PagerDuty and JSON payloads, the
// retries of a failing sink, and that a repeated alert is one alert with a count.
interface Received {
  path: string;
  body: any;
}

let test: TestApp;
let receiver: Server;
let base = '';
const received: Received[] = [];
let failuresLeft = 0;

before(async () => {
  receiver = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => (body += chunk));
    request.on('end', () => {
      if (request.url === '/flaky' && failuresLeft > 0) {
        failuresLeft -= 1;
        response.writeHead(503).end();
        return;
      }
      received.push({ path: request.url ?? '', body: JSON.parse(body) });
      response.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
  const address = receiver.address();
  base = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`;
  test = await createTestApp();
});
after(async () => {
  await test.close();
  await new Promise((resolve) => receiver.close(resolve));
});

const deliveryOptions = (urls: string[]) => ({
  sinks: parseSinks(urls),
  pagerDutyRoutingKey: 'R0UTINGKEY',
  retryBaseSeconds: 0,
  retryDelaySecondsMax: 0,
});

describe('alert sinks', () => {
  it('knows sinks by host or by prefix', () => {
    assert.deepEqual(
      parseSinks([
        'https://hooks.slack.com/services/T/B/X',
        'https://events.pagerduty.com/v2/enqueue',
        'https://ops.example/hook',
        'slack+http://127.0.0.1:9/s',
      ]).map((sink) => sink.kind),
      ['slack', 'pagerduty', 'json', 'slack'],
    );
  });

  it('sends the exact Slack, PagerDuty and JSON payloads', async () => {
    await raiseAlert(test.database.db.pool, {
      kind: 'dispute',
      key: 'dispute:dp_1',
      severity: 'critical',
      message: 'dispute dp_1 on account a1',
      details: { dispute: 'dp_1' },
      accountId: 'a1',
    });
    const urls = [`slack+${base}/slack`, `pagerduty+${base}/pagerduty`, `json+${base}/json`];
    assert.equal(await deliverAlerts(test.database.db, deliveryOptions(urls)), 3);
    const byPath = Object.fromEntries(received.map((item) => [item.path, item.body]));
    assert.deepEqual(byPath['/slack'], {
      text: ':rotating_light: Tally critical: dispute dp_1 on account a1',
      blocks: [{ type: 'section', text: { type: 'mrkdwn', text: ':rotating_light: *dispute* (critical)\ndispute dp_1 on account a1' } }],
    });
    assert.deepEqual(byPath['/pagerduty'], {
      routing_key: 'R0UTINGKEY',
      event_action: 'trigger',
      dedup_key: 'dispute:dp_1',
      payload: {
        summary: 'dispute dp_1 on account a1',
        source: 'tally',
        severity: 'critical',
        component: 'dispute',
        custom_details: { dispute: 'dp_1', account_id: 'a1', count: 1 },
      },
    });
    const json = byPath['/json'];
    assert.equal(json.key, 'dispute:dp_1');
    assert.equal(json.kind, 'dispute');
    assert.equal(json.severity, 'critical');
    assert.equal(json.account_id, 'a1');
    assert.equal(json.count, 1);
    assert.deepEqual(json.details, { dispute: 'dp_1' });
    assert.equal(await deliverAlerts(test.database.db, deliveryOptions(urls)), 0, 'nothing is sent twice');
  });

  it('retries a failing sink with backoff until it takes the alert', async () => {
    received.length = 0;
    failuresLeft = 4; // two deliveries due (the earlier alert and this one), each failing twice
    await raiseAlert(test.database.db.pool, {
      kind: 'account_in_debt',
      key: 'debt:a2',
      severity: 'warning',
      message: 'account a2 is in debt',
    });
    const options = deliveryOptions([`json+${base}/flaky`]);
    assert.equal(await deliverAlerts(test.database.db, options), 0);
    assert.equal(await deliverAlerts(test.database.db, options), 0);
    assert.equal(await deliverAlerts(test.database.db, options), 2, 'the earlier alert and this one, on the third try');
    const delivery = await test.database.db.query<{ attempts: number; delivered_at: Date | null }>(
      `select d.attempts, d.delivered_at from alert_deliveries d join alerts a on a.id = d.alert_id where a.alert_key = 'debt:a2' and d.sink = $1`,
      [`json+${base}/flaky`],
    );
    assert.equal(delivery.rows[0]?.attempts, 3);
    assert.ok(delivery.rows[0]?.delivered_at);
  });

  it('counts a repeated alert inside its window instead of sending it again', async () => {
    received.length = 0;
    const urls = [`json+${base}/json`];
    for (let index = 0; index < 5; index += 1) {
      await raiseAlert(test.database.db.pool, {
        kind: 'payment_failed',
        key: 'payment_failed:sub_9',
        severity: 'warning',
        message: 'payment failed for sub_9',
      });
      await deliverAlerts(test.database.db, deliveryOptions(urls));
    }
    assert.equal(received.filter((item) => item.body.key === 'payment_failed:sub_9').length, 1);
    const listed = await test.admin('GET', '/v1/admin/alerts');
    const alert = listed.body.alerts.find((item: { key: string }) => item.key === 'payment_failed:sub_9');
    assert.equal(alert.count, 5);
    assert.equal(listed.body.alerts.filter((item: { key: string }) => item.key === 'payment_failed:sub_9').length, 1);
  });
});

describe('alert rules', () => {
  const alertsFor = async (accountId: string) =>
    (
      await test.database.db.query<{ alert_key: string; count: number }>(
        `select alert_key, count from alerts where kind = 'grant_over_allowance' and account_id = $1`,
        [accountId],
      )
    ).rows;

  async function starterAccount(): Promise<{ accountId: string; customer: string }> {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(test, accountId, 0);
    await deliver(
      test,
      event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
    );
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({
          id: subscriptionId,
          customer,
          status: 'active',
          price: 'price_starter_monthly',
          start: 1893456000,
          end: 1896048000,
        }),
      ),
    );
    await settleWebhooks(test);
    return { accountId, customer };
  }

  it("raises an alert when an operator grants over 1.5 times the plan's allowance, once per grant", async () => {
    const { accountId } = await starterAccount();
    const atLimit = await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
      amount: 1500,
      source: 'promo',
      reason: 'at the limit',
      idempotency_key: uniqueId('g'),
    });
    assert.equal(atLimit.status, 201);
    assert.deepEqual(await alertsFor(accountId), [], 'a grant of exactly 1.5 times the allowance is allowed');
    const over = { amount: 1501, source: 'promo', reason: 'over', idempotency_key: uniqueId('g') };
    const large = await test.admin('POST', `/v1/accounts/${accountId}/grants`, over);
    assert.equal(large.status, 201);
    assert.deepEqual(await alertsFor(accountId), [{ alert_key: `grant_over_allowance:${large.body.id}`, count: 1 }]);
    const replay = await test.admin('POST', `/v1/accounts/${accountId}/grants`, over);
    assert.equal(replay.body.replayed, true);
    assert.deepEqual(
      await alertsFor(accountId),
      [{ alert_key: `grant_over_allowance:${large.body.id}`, count: 1 }],
      'a replay is not a new grant',
    );
  });

  it("raises the alert in the transaction of a Stripe grant over 1.5 times the plan's allowance", async () => {
    const { accountId, customer } = await starterAccount();
    const buy = async (packId: string, credits: number): Promise<string> => {
      const paymentIntent = uniqueId('pi');
      await deliver(
        test,
        event(
          'checkout.session.completed',
          checkoutSession({ mode: 'payment', accountId, customer, paymentIntent, packId, amountTotal: credits }),
        ),
      );
      return paymentIntent;
    };
    await buy('pack_1000', 1000);
    await settleWebhooks(test);
    assert.deepEqual(await alertsFor(accountId), []);
    const paymentIntent = await buy('pack_10000', 10000);
    await settleWebhooks(test);
    const { rows } = await test.database.db.query<{ id: string }>(
      `select 'grant_' || id as id from grants where account_id = $1 and amount = 10000`,
      [accountId],
    );
    const expected = [{ alert_key: `grant_over_allowance:${rows[0]?.id}`, count: 1 }];
    assert.deepEqual(await alertsFor(accountId), expected);
    // A won dispute gives the credits back with a restore grant: not a new grant to alert on.
    const opened = dispute({ amount: 10000, paymentIntent });
    await deliver(test, event('charge.dispute.created', opened));
    await settleWebhooks(test);
    await deliver(test, event('charge.dispute.closed', { ...opened, status: 'won' }));
    await settleWebhooks(test);
    const restored = await test.database.db.query(`select 1 from entries where account_id = $1 and kind = 'restore' and amount = 10000`, [
      accountId,
    ]);
    assert.equal(restored.rowCount, 1);
    assert.deepEqual(await alertsFor(accountId), expected);
  });

  it('raises an alert when more than 10 % of webhooks failed in 15 minutes', async () => {
    await test.database.db.query(`update webhook_events set received_at = now() - interval '1 hour'`);
    const insert = (id: string, error: string | null) =>
      test.database.db.query(`insert into webhook_events (id, type, created, payload, last_error) values ($1, 'x', now(), '{}', $2)`, [
        id,
        error,
      ]);
    for (let index = 0; index < 18; index += 1) await insert(uniqueId('evt_ok'), null);
    await insert(uniqueId('evt_bad'), 'boom');
    await insert(uniqueId('evt_bad'), 'boom');
    assert.equal(await checkWebhookFailureRate(test.database.db), false, '2 of 20 is 10 %, not above');
    await insert(uniqueId('evt_bad'), 'boom');
    assert.equal(await checkWebhookFailureRate(test.database.db), true);
    const open = `select resolved_at from alerts where alert_key = 'webhook_failure_rate'`;
    assert.deepEqual((await test.database.db.query(open)).rows, [{ resolved_at: null }]);
    for (let index = 0; index < 20; index += 1) await insert(uniqueId('evt_ok'), null);
    assert.equal(await checkWebhookFailureRate(test.database.db), false, '3 of 40 is under 10 %');
    const { rows } = await test.database.db.query<{ resolved_at: Date | null }>(open);
    assert.equal(rows.length, 1);
    assert.ok(rows[0]?.resolved_at instanceof Date, 'the alert is resolved once the rate is back under the threshold');
  });

  it('raises an alert when the Stripe breaker opens', async () => {
    const { createTestApp: create } = await import('../helpers/app.js');
    const { FakeStripe } = await import('../helpers/fake-stripe.js');
    const fake = await new FakeStripe().start();
    const withStripe = await create({ database: test.database, stripeApiBase: fake.url });
    try {
      fake.mode = 'error';
      for (let index = 0; index < 5; index += 1) {
        await withStripe.parts.gateway
          ?.retrieveCharge('ch_x')
          .catch((error: Error) => assert.match(error.message, /answered HTTP 500|failed|open/));
      }
      // The breaker records its alert without blocking the call that opened it: wait for it.
      const deadline = Date.now() + 5000;
      while (
        (await test.database.db.query(`select 1 from alerts where alert_key = 'stripe_breaker_open'`)).rowCount === 0 &&
        Date.now() < deadline
      ) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal((await test.database.db.query(`select 1 from alerts where alert_key = 'stripe_breaker_open'`)).rowCount, 1);
      // Stripe answers again: after the pause, a trial call succeeds, the breaker closes and the alert is resolved.
      fake.mode = 'ok';
      fake.charges.set('ch_back', { payment_intent: null });
      await new Promise((resolve) => setTimeout(resolve, 600));
      await withStripe.parts.gateway?.retrieveCharge('ch_back');
      assert.equal(withStripe.parts.gateway?.status().state, 'closed');
      const resolved = async () =>
        (await test.database.db.query(`select 1 from alerts where alert_key = 'stripe_breaker_open' and resolved_at is not null`)).rowCount;
      const until = Date.now() + 5000;
      while ((await resolved()) === 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(await resolved(), 1);
    } finally {
      await withStripe.close();
      await fake.stop();
    }
  });
});

describe('alert delivery from several processes', () => {
  it('sends each alert once when two processes deliver at the same time', async () => {
    received.length = 0;
    await raiseAlert(test.database.db.pool, {
      kind: 'dispute',
      key: uniqueId('dispute'),
      severity: 'critical',
      message: 'one alert, two processes',
    });
    const options = deliveryOptions([`json+${base}/json`]);
    await Promise.all([
      deliverAlerts(test.database.db, options),
      deliverAlerts(test.database.db, options),
      deliverAlerts(test.database.db, options),
    ]);
    assert.equal(received.filter((item) => item.body.message === 'one alert, two processes').length, 1);
  });
});

describe('alert resolution', () => {
  it('tells each sink once that an alert resolved, after its trigger; a new occurrence is a new alert', async () => {
    const key = uniqueId('condition');
    const urls = [`slack+${base}/slack-resolve`, `pagerduty+${base}/pagerduty-resolve`, `json+${base}/json-resolve`];
    const raise = () =>
      raiseAlert(test.database.db.pool, { kind: 'stripe_breaker_open', key, severity: 'critical', message: `breaker ${key} is open` });
    await raise();
    assert.equal(await resolveAlert(test.database.db.pool, key), true);
    assert.equal(await resolveAlert(test.database.db.pool, key), false, 'nothing left open');
    const sent = () => received.filter((item) => item.path.endsWith('-resolve') && JSON.stringify(item.body).includes(key));
    received.length = 0;
    await deliverAlerts(test.database.db, deliveryOptions(urls));
    assert.deepEqual(
      sent()
        .map((item) => `${item.path} ${item.body.event_action ?? item.body.action ?? item.body.text}`)
        .sort(),
      [`/json-resolve trigger`, `/pagerduty-resolve trigger`, `/slack-resolve :rotating_light: Tally critical: breaker ${key} is open`],
      'the triggers go first; the resolves wait for them',
    );
    received.length = 0;
    await deliverAlerts(test.database.db, deliveryOptions(urls));
    const byPath = Object.fromEntries(sent().map((item) => [item.path, item.body]));
    assert.deepEqual(byPath['/slack-resolve'], {
      text: `:white_check_mark: Tally resolved: breaker ${key} is open`,
      blocks: [
        { type: 'section', text: { type: 'mrkdwn', text: `:white_check_mark: *stripe_breaker_open* resolved\nbreaker ${key} is open` } },
      ],
    });
    assert.deepEqual(byPath['/pagerduty-resolve'], { routing_key: 'R0UTINGKEY', event_action: 'resolve', dedup_key: key });
    assert.equal(byPath['/json-resolve']?.action, 'resolve');
    assert.equal(typeof byPath['/json-resolve']?.resolved_at, 'string');
    received.length = 0;
    await deliverAlerts(test.database.db, deliveryOptions(urls));
    assert.deepEqual(sent(), [], 'each resolve is sent once');

    await raise();
    const listed = (await test.admin('GET', '/v1/admin/alerts')).body.alerts.filter((alert: { key: string }) => alert.key === key);
    assert.deepEqual(
      listed.map((alert: { count: number; resolved_at: string | null }) => [alert.count, alert.resolved_at === null]),
      [
        [1, true],
        [1, false],
      ],
    );
  });
});
