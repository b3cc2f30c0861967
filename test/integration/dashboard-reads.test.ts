import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { raiseAlert, resolveAlert } from '../../src/ops/alerts.js';
import { appKey, createTestApp, fundedAccount, startWithFakeStripe, stopWithFakeStripe, viewerKey, type TestApp } from '../helpers/app.js';
import { entitlementsCatalog } from '../helpers/entitlements-catalog.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, month, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

// The read-only admin calls the dashboard uses: who may call them (admin and viewer keys, never
// the app key), and that each answers what the ledger holds.
let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

const db = () => test.database.db;

describe('access', () => {
  // Proves: every new read answers the viewer key, refuses the app key (403) and no key (401).
  it('opens every dashboard read to the admin and viewer keys, refuses the app key and no key', async () => {
    await fundedAccount(test, 'access-1', 10);
    const stored = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', customer: uniqueId('cus'), paymentIntent: uniqueId('pi') }),
    );
    await deliver(test, stored);
    const entry = (await test.call('GET', '/v1/accounts/access-1/ledger')).body.entries[0].id;
    const urls = [
      '/v1/admin/caller',
      '/v1/admin/overview',
      '/v1/admin/credit-totals',
      '/v1/admin/accounts/search',
      '/v1/admin/accounts/access-1/grants',
      '/v1/admin/accounts/access-1/holds',
      '/v1/admin/accounts/access-1/balance-history',
      `/v1/admin/webhook-events/${stored.id}`,
      `/v1/admin/entries/${entry}`,
      '/v1/admin/accounts/access-1/meter-spend',
      '/v1/admin/rate-cards',
      '/v1/admin/accounts/access-1/plan',
      '/v1/admin/plans',
    ];
    for (const url of urls) {
      assert.equal((await test.admin('GET', url)).status, 200, `admin ${url}`);
      assert.equal((await test.call('GET', url, undefined, viewerKey)).status, 200, `viewer ${url}`);
      const app = await test.call('GET', url, undefined, appKey);
      assert.equal(app.status, 403, `app key ${url}`);
      assert.equal(app.body.error.code, 'forbidden');
      assert.equal((await test.call('GET', url, undefined, null)).status, 401, `no key ${url}`);
    }
  });

  // Proves: the caller call tells the dashboard which key it holds, so the viewer sees no actions.
  it('says which key the caller holds and whether Stripe is configured', async () => {
    assert.deepEqual((await test.admin('GET', '/v1/admin/caller')).body, { role: 'admin', can_act: true, stripe_configured: false });
    assert.deepEqual((await test.call('GET', '/v1/admin/caller', undefined, viewerKey)).body, {
      role: 'viewer',
      can_act: false,
      stripe_configured: false,
    });
  });

  // Proves: bad query values are refused with the field named, and nothing runs.
  it('refuses bad query values naming the field', async () => {
    const cases: [string, string][] = [
      ['/v1/admin/accounts/search?sort=name;drop', 'sort'],
      ['/v1/admin/accounts/search?offset=10001', 'offset'],
      ['/v1/admin/accounts/search?limit=0', 'limit'],
      ['/v1/admin/accounts/search?order=sideways', 'order'],
      ['/v1/admin/credit-totals?days=367', 'days'],
      ['/v1/admin/credit-totals?account_id=bad%20id', 'account_id'],
      ['/v1/admin/overview?hours=0', 'hours'],
      ['/v1/admin/accounts/access-1/grants?state=gone', 'state'],
      ['/v1/admin/accounts/access-1/holds?cursor=abc', 'cursor'],
      ['/v1/admin/accounts/access-1/balance-history?until=yesterday', 'until'],
      ['/v1/admin/accounts/access-1/meter-spend?days=0', 'days'],
      ['/v1/admin/accounts/access-1/meter-spend?until=2030-02-30', 'until'],
      ['/v1/admin/rate-cards?versions=201', 'versions'],
    ];
    for (const [url, field] of cases) {
      const response = await test.admin('GET', url);
      assert.equal(response.status, 400, url);
      assert.equal(response.body.error.field, field, url);
    }
  });

  // Proves: an unknown account, event or entry is a 404 with its own code.
  it('answers 404 for an unknown account, event or entry', async () => {
    for (const url of [
      '/v1/admin/accounts/nobody/grants',
      '/v1/admin/accounts/nobody/holds',
      '/v1/admin/accounts/nobody/balance-history',
      '/v1/admin/accounts/nobody/meter-spend',
      '/v1/admin/accounts/nobody/plan',
    ]) {
      const response = await test.admin('GET', url);
      assert.equal(response.status, 404, url);
      assert.equal(response.body.error.code, 'account_not_found');
    }
    assert.equal((await test.admin('GET', '/v1/admin/webhook-events/evt_never')).body.error.code, 'event_not_found');
    assert.equal((await test.admin('GET', '/v1/admin/entries/entry_999999999')).body.error.code, 'entry_not_found');
    assert.equal((await test.admin('GET', '/v1/admin/entries/not-an-entry')).status, 404);
  });
});

describe('what the reads answer', () => {
  // Proves: the overview's credits are the sums of every account's balance call (grants past
  // their expiry excluded before the sweep), and its webhook, alert and reconciliation figures
  // count what is stored.
  it('sums balances, counts webhooks, alerts and the last reconciliation', async () => {
    await fundedAccount(test, 'sum-a', 100);
    await test.call('POST', '/v1/accounts/sum-a/usage', { amount: 30, idempotency_key: uniqueId('u') });
    await test.call('POST', '/v1/accounts/sum-a/holds', { amount: 20, idempotency_key: uniqueId('h') });
    await fundedAccount(test, 'sum-b', 50, { expires_at: '2030-01-01T06:00:00Z' });
    await fundedAccount(test, 'sum-c', 7);
    const early = (await test.admin('GET', '/v1/admin/overview')).body;
    test.clock.advanceSeconds(7 * 3600);
    const { rows } = await db().query<{ id: string }>('select id from accounts order by id');
    const expected = { available: 0, held: 0, debt: 0 };
    for (const { id } of rows) {
      const balance = (await test.call('GET', `/v1/accounts/${id}/balance`)).body;
      expected.available += balance.available;
      expected.held += balance.held;
      expected.debt += balance.debt;
    }
    const overview = (await test.admin('GET', '/v1/admin/overview')).body;
    assert.deepEqual(overview.credits, { ...expected, outstanding: expected.available + expected.held });
    assert.equal(early.credits.available - overview.credits.available, 50, 'the expired grant stopped counting before any sweep');
    assert.equal(overview.accounts.count, rows.length);
    assert.deepEqual(overview.stripe, { configured: false, breaker: { state: 'not_configured', failures: 0, opened_at: null } });

    const webhooksBefore = overview.webhooks;
    const applied = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', customer: uniqueId('cus'), paymentIntent: uniqueId('pi') }),
    );
    const refused = event('invoice.paid', { id: uniqueId('in'), object: 'invoice' });
    await deliver(test, applied);
    await deliver(test, refused);
    await db().query(`update webhook_events set status = 'processed', processed_at = received_at + interval '2 seconds' where id = $1`, [
      applied.id,
    ]);
    await db().query(`update webhook_events set status = 'failed', attempts = 14 where id = $1`, [refused.id]);
    await raiseAlert(db().pool, { kind: 'test_alert', key: 'reads-open', severity: 'critical', message: 'open' });
    await raiseAlert(db().pool, { kind: 'test_alert', key: 'reads-resolved', severity: 'warning', message: 'resolved' });
    await resolveAlert(db().pool, 'reads-resolved');
    assert.equal(overview.last_reconciliation, null);
    const run = (await test.admin('POST', '/v1/admin/reconcile', {})).body;
    const later = (await test.admin('GET', '/v1/admin/overview')).body;
    assert.equal(later.webhooks.received, webhooksBefore.received + 2);
    assert.equal(later.webhooks.processed, webhooksBefore.processed + 1);
    assert.equal(later.webhooks.failed, webhooksBefore.failed + 1);
    assert.equal(later.webhooks.failed_total, webhooksBefore.failed_total + 1);
    assert.equal(later.webhooks.lag_seconds_max, 2);
    assert.ok(later.webhooks.types.includes('invoice.paid') && later.webhooks.types.includes('checkout.session.completed'));
    assert.equal(later.alerts.open, 1);
    assert.equal(later.alerts.open_critical, 1);
    assert.ok(later.alerts.resolved >= 1);
    assert.equal(later.last_reconciliation.run_id, run.run_id);
    assert.equal(later.last_reconciliation.status, 'done');
  });

  // Proves: credits per day split into granted, spent (usage and captures), expired and adjusted
  // down, for one account, on the ledger clock's days.
  it('totals one account per day: granted, spent, expired, adjusted down', async () => {
    await fundedAccount(test, 'totals', 100);
    await fundedAccount(test, 'totals', 40, { expires_at: '2030-01-01T12:00:00Z' });
    // Spends take the expiring grant first; at least 5 of its 40 are left to expire.
    await test.call('POST', '/v1/accounts/totals/usage', { amount: 10, idempotency_key: uniqueId('u') });
    const hold = (await test.call('POST', '/v1/accounts/totals/holds', { amount: 20, idempotency_key: uniqueId('h') })).body;
    await test.call('POST', `/v1/holds/${hold.hold_id}/capture`, { amount: 15 });
    await test.admin('POST', '/v1/accounts/totals/adjustments', { amount: -5, reason: 'correction', idempotency_key: uniqueId('a') });
    test.clock.advanceSeconds(6 * 3600);
    await test.ledger.settleAccount('totals');
    const days = (await test.admin('GET', '/v1/admin/credit-totals?days=3&account_id=totals')).body.days;
    assert.deepEqual(
      days.map((day: { day: string }) => day.day),
      ['2029-12-30', '2029-12-31', '2030-01-01'],
    );
    const today = days[2];
    assert.deepEqual(today, { day: '2030-01-01', granted: 140, spent: 25, expired: today.expired, clawed_back: 0, adjusted_down: 5 });
    const expired = await db().query<{ total: string }>(
      `select coalesce(-sum(amount), 0)::text as total from entries where account_id = 'totals' and kind = 'expire'`,
    );
    assert.ok(Number(expired.rows[0]?.total) > 0, 'the sweep expired what was left of the grant');
    assert.equal(today.expired, Number(expired.rows[0]?.total));
    assert.deepEqual(days[0], { day: '2029-12-30', granted: 0, spent: 0, expired: 0, clawed_back: 0, adjusted_down: 0 });
    const before = (await test.admin('GET', '/v1/admin/credit-totals?days=1&until=2029-12-31&account_id=totals')).body.days;
    assert.deepEqual(before, [{ day: '2029-12-31', granted: 0, spent: 0, expired: 0, clawed_back: 0, adjusted_down: 0 }]);
  });

  // Proves: search matches the start of an id, an email in any case, or a Stripe customer id;
  // sorting and offset paging hold together.
  it('searches accounts by id, email or Stripe customer, sorted and paged', async () => {
    await test.call('PUT', '/v1/accounts/srch-alpha', { email: 'Alpha.Person@Example.com' });
    await fundedAccount(test, 'srch-alpha', 10);
    await fundedAccount(test, 'srch-beta', 30);
    await fundedAccount(test, 'srch-gamma', 20);
    await db().query(`update accounts set stripe_customer_id = 'cus_SEARCH_1' where id = 'srch-beta'`);
    const ids = async (search: string) =>
      (await test.admin('GET', `/v1/admin/accounts/search?search=${encodeURIComponent(search)}`)).body.accounts.map(
        (account: { id: string }) => account.id,
      );
    assert.deepEqual(await ids('srch-'), ['srch-alpha', 'srch-beta', 'srch-gamma']);
    assert.deepEqual(await ids('alpha.person@'), ['srch-alpha'], 'email, any case');
    assert.deepEqual(await ids('cus_SEARCH'), ['srch-beta'], 'Stripe customer');
    assert.deepEqual(await ids('nothing-like-this'), []);
    const first = (await test.admin('GET', '/v1/admin/accounts/search?search=srch-&sort=available&order=desc&limit=2')).body;
    assert.deepEqual(
      first.accounts.map((account: { id: string; available: number }) => [account.id, account.available]),
      [
        ['srch-beta', 30],
        ['srch-gamma', 20],
      ],
    );
    assert.equal(first.next_offset, 2);
    const second = (await test.admin('GET', '/v1/admin/accounts/search?search=srch-&sort=available&order=desc&limit=2&offset=2')).body;
    assert.deepEqual(
      second.accounts.map((account: { id: string }) => account.id),
      ['srch-alpha'],
    );
    assert.equal(second.next_offset, null);
    assert.equal(second.accounts[0].email, 'Alpha.Person@Example.com');
  });

  // Proves: grants are told apart as live, used up or expired (expired at once when their expiry
  // passes, before the sweep).
  it("lists an account's grants as live or past, with their state", async () => {
    await fundedAccount(test, 'grants-1', 10);
    await fundedAccount(test, 'grants-1', 20, { expires_at: '2030-01-09T00:00:00Z' });
    await fundedAccount(test, 'grants-1', 30, { priority: 5 });
    // Spend order: priority, then earliest expiry: the 20, then the 10; the 30 comes last.
    await test.call('POST', '/v1/accounts/grants-1/usage', { amount: 30, idempotency_key: uniqueId('u') });
    const states = async (state: string) =>
      (await test.admin('GET', `/v1/admin/accounts/grants-1/grants?state=${state}`)).body.grants.map(
        (grant: { amount: number; state: string }) => [grant.amount, grant.state],
      );
    assert.deepEqual(await states('live'), [[30, 'live']]);
    assert.deepEqual(await states('past'), [
      [20, 'used_up'],
      [10, 'used_up'],
    ]);
    await fundedAccount(test, 'grants-1', 40, { expires_at: '2030-01-09T00:00:00Z' });
    test.clock.advanceSeconds(10 * 86400);
    assert.deepEqual(await states('live'), [[30, 'live']]);
    assert.deepEqual(await states('past'), [
      [40, 'expired'],
      [20, 'expired'],
      [10, 'used_up'],
    ]);
    assert.deepEqual(await states('all'), [
      [40, 'expired'],
      [30, 'live'],
      [20, 'expired'],
      [10, 'used_up'],
    ]);
    const paged = (await test.admin('GET', '/v1/admin/accounts/grants-1/grants?limit=2')).body;
    assert.equal(paged.grants.length, 2);
    assert.equal(paged.next_offset, 2);
  });

  // Proves: holds are listed newest first, filtered by status, paged by cursor.
  it("lists an account's holds by status, paged", async () => {
    await fundedAccount(test, 'holds-1', 100);
    const first = (await test.call('POST', '/v1/accounts/holds-1/holds', { amount: 10, idempotency_key: uniqueId('h') })).body;
    const second = (await test.call('POST', '/v1/accounts/holds-1/holds', { amount: 20, idempotency_key: uniqueId('h') })).body;
    const third = (await test.call('POST', '/v1/accounts/holds-1/holds', { amount: 30, idempotency_key: uniqueId('h') })).body;
    await test.call('POST', `/v1/holds/${second.hold_id}/void`);
    const pending = (await test.admin('GET', '/v1/admin/accounts/holds-1/holds?status=pending')).body;
    assert.deepEqual(
      pending.holds.map((hold: { id: string }) => hold.id),
      [third.hold_id, first.hold_id],
    );
    assert.equal(pending.holds[0].status, 'pending');
    const page = (await test.admin('GET', '/v1/admin/accounts/holds-1/holds?limit=2')).body;
    assert.deepEqual(
      page.holds.map((hold: { id: string; status: string }) => [hold.id, hold.status]),
      [
        [third.hold_id, 'pending'],
        [second.hold_id, 'voided'],
      ],
    );
    const rest = (await test.admin('GET', `/v1/admin/accounts/holds-1/holds?limit=2&cursor=${page.next_cursor}`)).body;
    assert.deepEqual(
      rest.holds.map((hold: { id: string }) => hold.id),
      [first.hold_id],
    );
    assert.equal(rest.next_cursor, null);
  });

  // Proves: the balance over time is the last entry's balance at each day's end, null before the first.
  it("answers an account's balance at the end of each day", async () => {
    await fundedAccount(test, 'history-1', 100);
    test.clock.advanceSeconds(86400);
    await test.call('POST', '/v1/accounts/history-1/usage', { amount: 25, idempotency_key: uniqueId('u') });
    const today = test.clock.now().toISOString().slice(0, 10);
    const days = (await test.admin('GET', `/v1/admin/accounts/history-1/balance-history?days=3&until=${today}`)).body.days;
    assert.deepEqual(
      days.map((day: { balance: number | null }) => day.balance),
      [null, 100, 75],
    );
  });

  // Proves: one stored Stripe event comes with its payload; one entry with its account.
  it('answers one webhook event with its payload and one entry with its account', async () => {
    const stored = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', customer: 'cus_payload', paymentIntent: uniqueId('pi') }),
    );
    await deliver(test, stored);
    const answer = (await test.admin('GET', `/v1/admin/webhook-events/${stored.id}`)).body;
    assert.equal(answer.type, 'checkout.session.completed');
    assert.equal(answer.payload.data.object.customer, 'cus_payload');
    assert.equal(answer.status, 'pending');
    await fundedAccount(test, 'entry-1', 12);
    const ledger = (await test.call('GET', '/v1/accounts/entry-1/ledger')).body.entries;
    const entry = (await test.admin('GET', `/v1/admin/entries/${ledger[0].id}`)).body;
    assert.deepEqual(entry, { ...ledger[0], account_id: 'entry-1' });
  });
});

describe('priced usage on the dashboard', () => {
  interface Version {
    id: string;
    version: number;
    effective_at: string;
    rates: Record<string, Record<string, string>>;
    published_at: string;
    source: string;
    state?: string;
  }
  const cards = async (
    query = '',
  ): Promise<
    {
      id: string;
      default: boolean;
      plans: string[];
      current: Version | null;
      next: Version | null;
      versions: Version[];
      versions_total: number;
    }[]
  > => (await test.admin('GET', `/v1/admin/rate-cards${query}`)).body.rate_cards;
  const card = async (id: string, query = '') => {
    const found = (await cards(query)).find((one) => one.id === id);
    assert.ok(found, `card ${id} is listed`);
    return found;
  };
  const states = (versions: Version[]) => versions.map((version) => [version.version, version.state, version.source]);
  const inHours = (hours: number): string => new Date(test.clock.now().getTime() + hours * 3600_000).toISOString();

  // Proves: the rate cards read lists every card with its default flag, plans, current and next
  // version and its history with each version's source and state, agreeing with GET
  // /v1/rate-cards on current and next, through publications now, later, and at the same instant.
  it('lists every rate card: default, plans, current, next, and versions with source and state', async () => {
    const first = await cards();
    assert.deepEqual(
      first.map((one) => [one.id, one.default, one.plans]),
      [
        ['standard', true, ['plus']],
        ['volume', false, ['pro']],
      ],
    );
    const volume = await card('volume');
    assert.equal(volume.current?.source, 'catalog');
    assert.equal(volume.next, null);
    assert.deepEqual(states(volume.versions), [[1, 'current', 'catalog']]);
    const rates = volume.current?.rates ?? {};
    assert.equal(rates['openai/gpt-5']?.output_tokens, '0.0008', 'a rate is the exact decimal string of the catalog');

    // An operator's version now, then two later ones, then a third at the second's instant.
    const changed = { ...rates, 'images/generate': { images: '0.000000000001' } };
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: changed })).status, 200);
    await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates, effective_at: inHours(1) });
    const twoHours = inHours(2);
    await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: changed, effective_at: twoHours });
    await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates, effective_at: twoHours });
    const published = await card('volume');
    assert.deepEqual(states(published.versions), [
      [5, 'scheduled', 'admin'],
      [4, 'superseded', 'admin'],
      [3, 'next', 'admin'],
      [2, 'current', 'admin'],
      [1, 'superseded', 'catalog'],
    ]);
    assert.equal(published.versions_total, 5);
    assert.equal(published.versions[3]?.rates['images/generate']?.images, '0.000000000001', 'twelve places, exactly');
    const api = (await test.call('GET', '/v1/rate-cards')).body.rate_cards.find((one: { id: string }) => one.id === 'volume');
    const { source: _current, state: _state, ...current } = published.versions[3] as Version;
    const { source: _next, ...next } = published.next as Version;
    assert.deepEqual(api, { ...current, next }, 'current and next are those the API answers');
    assert.equal(published.current?.version, 2);

    test.clock.advanceSeconds(3 * 3600);
    const later = await card('volume');
    assert.equal(later.current?.version, 5, 'the last published of the same instant took effect');
    assert.equal(later.next, null);
    assert.deepEqual(
      states(later.versions).map(([version, state]) => [version, state]),
      [
        [5, 'current'],
        [4, 'superseded'],
        [3, 'superseded'],
        [2, 'superseded'],
        [1, 'superseded'],
      ],
    );
    const limited = await card('volume', '?versions=2');
    assert.deepEqual(
      limited.versions.map((version) => version.version),
      [5, 4],
    );
    assert.equal(limited.versions_total, 5);
  });

  const scale = 10n ** 12n;
  /** A decimal string as an integer count of 10^-12 credits: exact, unlike a float. */
  const units = (decimal: string): bigint => {
    const [whole = '0', fraction = ''] = decimal.split('.');
    return BigInt(whole) * scale + BigInt(fraction.padEnd(12, '0'));
  };
  const spend = async (account: string, body: Record<string, unknown>) => {
    const answer = await test.call('POST', `/v1/accounts/${account}/usage`, { ...body, idempotency_key: uniqueId('u') });
    assert.equal(answer.status, 200, JSON.stringify(answer.body));
    return answer.body;
  };

  // Proves: spend by meter sums usage and captured holds per meter and per UTC day as the
  // credits charged and the exact numeric cost (equal to the ledger's own entries), keeps plain
  // spends under null, and leaves out holds not captured and other accounts' spends.
  it("totals an account's spend per meter and per day, exactly, as its ledger says", async () => {
    await fundedAccount(test, 'metered', 1000);
    await fundedAccount(test, 'metered-other', 1000);
    const yesterday = test.clock.now().toISOString().slice(0, 10);
    // 5000 × 0.000025 + 1000 × 0.0002 = 0.325: no credit yet, the carry keeps it.
    assert.equal(
      (await spend('metered', { meter: 'openai/gpt-5-mini', quantities: { input_tokens: 5000, output_tokens: 1000 } })).amount,
      0,
    );
    // 3000 × 0.001 = 3 (+ 0.325 carried): 3 credits.
    assert.equal((await spend('metered', { meter: 'openai/gpt-5', quantities: { output_tokens: 3000 } })).amount, 3);
    await spend('metered', { amount: 7 });
    const hold = await test.call('POST', '/v1/accounts/metered/holds', {
      meter: 'images/generate',
      quantities: { images: 2 },
      idempotency_key: uniqueId('h'),
    });
    assert.equal(hold.status, 201, JSON.stringify(hold.body));
    const captured = await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { quantities: { images: 1 } });
    assert.equal(captured.body.captured, 4, JSON.stringify(captured.body));
    // Reserved, never captured: no spend.
    await test.call('POST', '/v1/accounts/metered/holds', {
      meter: 'images/generate',
      quantities: { images: 5 },
      idempotency_key: uniqueId('h'),
    });
    const voided = await test.call('POST', '/v1/accounts/metered/holds', { amount: 9, idempotency_key: uniqueId('h') });
    await test.call('POST', `/v1/holds/${voided.body.hold_id}/void`);
    await spend('metered', { meter: 'openai/gpt-5-mini', quantities: { input_tokens: 1 } });
    await spend('metered-other', { meter: 'openai/gpt-5', quantities: { output_tokens: 50_000 } });
    test.clock.advanceSeconds(86400);
    const today = test.clock.now().toISOString().slice(0, 10);
    // 8000 × 0.000125 = 1.
    assert.equal((await spend('metered', { meter: 'openai/gpt-5', quantities: { input_tokens: 8000 } })).amount, 1);

    const read = (await test.admin('GET', `/v1/admin/accounts/metered/meter-spend?days=2&until=${today}`)).body;
    assert.deepEqual([read.from, read.to], [yesterday, today]);
    assert.deepEqual(read.meters, [
      { meter: null, credits: 7, cost: null, spends: 1 },
      { meter: 'images/generate', credits: 4, cost: '4', spends: 1 },
      { meter: 'openai/gpt-5', credits: 4, cost: '4', spends: 2 },
      { meter: 'openai/gpt-5-mini', credits: 0, cost: '0.325025', spends: 2 },
    ]);
    assert.deepEqual(
      read.days.map((day: { day: string; meters: { meter: string | null; credits: number; cost: string | null }[] }) => [
        day.day,
        day.meters.map((one) => [one.meter, one.credits, one.cost]),
      ]),
      [
        [
          yesterday,
          [
            [null, 7, null],
            ['images/generate', 4, '4'],
            ['openai/gpt-5', 3, '3'],
            ['openai/gpt-5-mini', 0, '0.325025'],
          ],
        ],
        [today, [['openai/gpt-5', 1, '1']]],
      ],
    );

    // The same totals from the ledger itself: credits charged and exact costs per meter.
    const entries = (await test.call('GET', '/v1/accounts/metered/ledger?limit=200')).body.entries as {
      kind: string;
      amount: number;
      meter?: string;
      cost?: string;
      reference: { captured?: number };
    }[];
    const fromLedger = new Map<string | null, { credits: number; cost: bigint }>();
    for (const entry of entries) {
      if (entry.kind !== 'usage' && entry.kind !== 'capture') continue;
      const meter = entry.meter ?? null;
      const sum = fromLedger.get(meter) ?? { credits: 0, cost: 0n };
      sum.credits += entry.kind === 'usage' ? -entry.amount : (entry.reference.captured ?? 0);
      sum.cost += entry.cost === undefined ? 0n : units(entry.cost);
      fromLedger.set(meter, sum);
    }
    for (const total of read.meters as { meter: string | null; credits: number; cost: string | null }[]) {
      assert.equal(total.credits, fromLedger.get(total.meter)?.credits, `credits of ${total.meter}`);
      assert.equal(total.cost === null ? 0n : units(total.cost), fromLedger.get(total.meter)?.cost, `cost of ${total.meter}`);
    }
    assert.equal(fromLedger.size, read.meters.length);

    const one = (await test.admin('GET', `/v1/admin/accounts/metered/meter-spend?days=1&until=${yesterday}`)).body;
    assert.deepEqual(
      one.meters.map((total: { meter: string | null; credits: number }) => [total.meter, total.credits]),
      [
        [null, 7],
        ['images/generate', 4],
        ['openai/gpt-5', 3],
        ['openai/gpt-5-mini', 0],
      ],
    );
  });

  // Proves: an account that spent nothing in the window answers no meters and every day empty.
  it('answers no meters and empty days for an account that spent nothing', async () => {
    await fundedAccount(test, 'unmetered', 10);
    const read = (await test.admin('GET', '/v1/admin/accounts/unmetered/meter-spend?days=3')).body;
    assert.deepEqual(read.meters, []);
    assert.equal(read.days.length, 3);
    assert.ok(read.days.every((day: { meters: unknown[] }) => day.meters.length === 0));
    assert.equal(read.to, test.clock.now().toISOString().slice(0, 10), "the window ends today on the ledger's clock");
  });
});

describe('plans on the dashboard', () => {
  // A Tally of its own whose catalog has a free plan (one meter, 50 credits a day), a plus plan
  // (every meter, 20 credits a day) and a pro plan (gpt-5 only), with Stripe faked for the
  // subscriptions' events, so that every count below is exact.
  let plans: TestApp;
  let fake: FakeStripe;
  before(async () => ({ test: plans, fake } = await startWithFakeStripe({ catalog: entitlementsCatalog() })));
  after(() => stopWithFakeStripe(plans, fake));
  const t0 = Date.parse('2030-01-01T00:00:00Z') / 1000;

  /**
   * An account whose subscription to `price` is mirrored in `status`; with `movedTo`, an update
   * then moves it to that price (a subscription Tally mirrors stays mirrored on a price outside
   * the catalog, and is then on no plan).
   */
  async function subscribed(status: string, price: string, movedTo?: string): Promise<string> {
    const accountId = uniqueId('acct');
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(plans, accountId, 0);
    await deliver(
      plans,
      event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
    );
    const state = (priced: string) =>
      subscription({
        id: subscriptionId,
        customer,
        status,
        price: priced,
        start: t0,
        end: t0 + month,
        trialEnd: status === 'trialing' ? t0 + 7 * 86400 : null,
      });
    await deliver(plans, event('customer.subscription.created', state(price), { created: 1_900_000_000 }));
    if (movedTo !== undefined) await deliver(plans, event('customer.subscription.updated', state(movedTo), { created: 1_900_000_100 }));
    await settleWebhooks(plans);
    return accountId;
  }
  const planOf = async (accountId: string) => (await plans.admin('GET', `/v1/admin/accounts/${accountId}/plan`)).body;

  // Proves: the plan read answers what the entitlements call answers, with the catalog's names,
  // and each recurring grant's period; it gives no grant itself, and shows the period's grant
  // once the account's first call of the day gave it.
  it("answers the account's plan with its names, and this period's recurring grant once given", async () => {
    await fundedAccount(plans, 'plan-free', 0);
    const today = plans.clock.now().toISOString().slice(0, 10);
    const before = await planOf('plan-free');
    const entitlements = (await plans.call('GET', '/v1/accounts/plan-free/entitlements')).body;
    for (const field of ['plan_id', 'source', 'meters', 'features', 'rate_card'])
      assert.deepEqual(before[field], entitlements[field], `${field} as the entitlements call says`);
    assert.deepEqual(before, {
      plan_id: 'free',
      plan_name: 'Free',
      source: 'free',
      meters: ['openai/gpt-5-mini'],
      features: { projects: 1 },
      rate_card: { id: 'standard', version: 1 },
      recurring_grants: [
        {
          plan_id: 'free',
          plan_name: 'Free',
          credits: 50,
          every: 'day',
          period_start: today,
          period_end: new Date(Date.parse(`${today}T00:00:00Z`) + 86_400_000).toISOString(),
          grant: null,
        },
      ],
    });
    const written = await plans.database.db.query("select 1 from grants where account_id = 'plan-free'");
    assert.equal(written.rowCount, 0, 'reading the plan gives no grant');

    // The day's first read gives the grant; the plan read then shows it, and spends come out of it.
    assert.equal((await plans.call('GET', '/v1/accounts/plan-free/balance')).body.available, 50);
    await plans.call('POST', '/v1/accounts/plan-free/usage', { amount: 15, idempotency_key: uniqueId('u') });
    const given = (await planOf('plan-free')).recurring_grants[0].grant;
    assert.deepEqual([given.source, given.amount, given.remaining, given.state], ['recurring', 50, 35, 'live']);
    assert.equal(given.expires_at, new Date(Date.parse(`${today}T00:00:00Z`) + 86_400_000).toISOString());

    const plus = await subscribed('active', 'price_plus_monthly');
    const onPlus = await planOf(plus);
    assert.deepEqual(
      [onPlus.plan_id, onPlus.plan_name, onPlus.source, onPlus.meters, onPlus.features],
      ['plus', 'Plus', 'subscription', 'all', { projects: 10, custom_agents: true }],
    );
    assert.deepEqual(
      onPlus.recurring_grants.map((grant: { plan_name: string; credits: number; every: string }) => [
        grant.plan_name,
        grant.credits,
        grant.every,
      ]),
      [['Plus', 20, 'day']],
    );
    const unknown = await subscribed('active', 'price_plus_monthly', 'price_not_in_the_catalog');
    const onNothing = await planOf(unknown);
    assert.deepEqual(
      [onNothing.plan_id, onNothing.plan_name, onNothing.source, onNothing.recurring_grants],
      [null, null, 'subscription', []],
    );
  });

  // Proves: accounts per plan count every account once, as a spend decides its plan: a trial
  // and an active subscription apart, a cancelled subscription back on the free plan, a price
  // outside the catalog on no plan; every catalog plan is listed, in its order, even with none.
  it('counts the accounts on each plan, free plan and no plan included', async () => {
    const before = (await plans.admin('GET', '/v1/admin/plans')).body;
    await fundedAccount(plans, uniqueId('free'), 0);
    await fundedAccount(plans, uniqueId('free'), 0);
    await subscribed('trialing', 'price_plus_monthly');
    await subscribed('past_due', 'price_plus_monthly');
    await subscribed('active', 'price_pro_monthly');
    await subscribed('canceled', 'price_pro_monthly');
    await subscribed('active', 'price_plus_monthly', 'price_not_in_the_catalog');
    const answer = (await plans.admin('GET', '/v1/admin/plans')).body;
    const rows = (body: typeof answer) =>
      body.plans.map(
        (row: { plan_id: string | null; name: string | null; free: boolean; accounts: number; subscription: number; trial: number }) => [
          row.plan_id,
          row.name,
          row.free,
          row.accounts,
          row.subscription,
          row.trial,
        ],
      );
    const earlier = new Map(rows(before).map((row: unknown[]) => [row[0], row]));
    const grown = rows(answer).map((row: [string | null, string | null, boolean, number, number, number]) => {
      const was = earlier.get(row[0]) as number[];
      return [row[0], row[1], row[2], row[3] - (was[3] ?? 0), row[4] - (was[4] ?? 0), row[5] - (was[5] ?? 0)];
    });
    assert.deepEqual(grown, [
      ['free', 'Free', true, 3, 0, 0],
      ['starter', 'Starter', false, 0, 0, 0],
      ['plus', 'Plus', false, 2, 1, 1],
      ['pro', 'Pro', false, 1, 1, 0],
      [null, null, false, 1, 1, 0],
    ]);
    const { rows: total } = await plans.database.db.query<{ count: number }>('select count(*)::int as count from accounts');
    assert.equal(answer.accounts, total[0]?.count);
    assert.equal(
      answer.plans.reduce((sum: number, row: { accounts: number }) => sum + row.accounts, 0),
      answer.accounts,
      'every account is on exactly one row',
    );
  });

  // Proves: without a free plan every account without a live subscription is on no plan, and
  // each catalog plan is still listed.
  it('puts accounts on no plan when the catalog has no free plan', async () => {
    await fundedAccount(test, uniqueId('noplan'), 0);
    const answer = (await test.admin('GET', '/v1/admin/plans')).body;
    assert.deepEqual(
      answer.plans.map((row: { plan_id: string | null; free: boolean }) => [row.plan_id, row.free]),
      [
        ['starter', false],
        ['plus', false],
        ['pro', false],
        [null, false],
      ],
    );
    assert.ok(answer.accounts > 0);
    assert.equal(answer.plans[3].accounts, answer.accounts, 'no account has a subscription in this file');
    const plan = (await test.admin('GET', '/v1/admin/accounts/access-1/plan')).body;
    assert.deepEqual([plan.plan_id, plan.plan_name, plan.source, plan.meters, plan.recurring_grants], [null, null, 'none', 'all', []]);
  });
});
