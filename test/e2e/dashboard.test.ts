import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { after, before, it } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { raiseAlert, resolveAlert } from '../../src/ops/alerts.js';
import { adminKey, createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { deliver, event, invoice, uniqueId } from '../helpers/stripe-events.js';

// The dashboard in a real browser (Debian's Chromium, driven by playwright-core): the operator
// opens it with the admin key, sees balances, opens an account's ledger, replays a failed
// webhook event, runs a reconciliation, and sees credits granted and spent.
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
let test: TestApp;
let browser: Browser | undefined;
let base = '';

before(async () => {
  test = await createTestApp();
  base = await test.app.listen({ port: 0, host: '127.0.0.1' });
  if (existsSync(chromiumPath)) {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  }
});
after(async () => {
  await browser?.close();
  await test.close();
});

it('serves the page without data, and the data only to the admin key', async () => {
  const page = await fetch(`${base}/dashboard`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /text\/html/);
  const html = await page.text();
  assert.match(html, /admin key/);
  assert.equal((await fetch(`${base}/v1/admin/accounts`)).status, 401);
  assert.equal((await test.call('GET', '/v1/admin/credit-history')).status, 403);
});

it('lists accounts by id with search and paging, and credits per day', async () => {
  for (const name of ['dash-a', 'dash-b', 'dash-c']) await fundedAccount(test, name, 10);
  await test.call('POST', '/v1/accounts/dash-a/usage', { amount: 4, idempotency_key: uniqueId('u') });
  const first = await test.admin('GET', '/v1/admin/accounts?search=dash-&limit=2');
  assert.deepEqual(first.body.accounts.map((account: { id: string }) => account.id), ['dash-a', 'dash-b']);
  assert.equal(first.body.next_after, 'dash-b');
  const second = await test.admin('GET', `/v1/admin/accounts?search=dash-&limit=2&after=${first.body.next_after}`);
  assert.deepEqual(second.body.accounts.map((account: { id: string; available: number }) => [account.id, account.available]), [['dash-c', 10]]);
  const history = await test.admin('GET', '/v1/admin/credit-history?days=7&until=2030-01-01');
  assert.equal(history.body.days.length, 7);
  const today = history.body.days[6];
  assert.ok(Number(today.granted) >= 30);
  assert.ok(Number(today.spent) >= 4);
});

it('works in a browser: balances, an account ledger, replay, reconciliation, chart', async (t) => {
  if (browser === undefined) {
    t.skip(`no Chromium at ${chromiumPath} (apt-get install chromium)`);
    return;
  }
  await fundedAccount(test, 'dash-browser', 500);
  await test.call('POST', '/v1/accounts/dash-browser/usage', { amount: 120, idempotency_key: uniqueId('u') });
  const orphan = event('invoice.paid', invoice({ customer: uniqueId('cus'), subscription: uniqueId('sub'), lines: [{ price: 'price_plus_monthly', start: 1893456000, end: 1896048000 }] }));
  await deliver(test, orphan);
  await test.database.db.query(`update webhook_events set status = 'failed', attempts = 14, last_error = 'no account known' where id = $1`, [orphan.id]);
  await raiseAlert(test.database.db.pool, { kind: 'stripe_breaker_open', key: 'dash-breaker', severity: 'critical', message: 'dashboard breaker alert' });
  await resolveAlert(test.database.db.pool, 'dash-breaker');
  const page = await browser.newPage();
  await page.goto(`${base}/dashboard`);
  await page.fill('#key', adminKey);
  await page.click('#key-form button');
  await page.fill('#search', 'dash-browser');
  await page.waitForSelector('#accounts a[data-account="dash-browser"]');
  assert.match(await page.textContent('#accounts') ?? '', /dash-browser\s*380/);
  assert.match(await page.textContent('#breaker') ?? '', /breaker: closed/);
  assert.match(await page.textContent('#alerts') ?? '', /dashboard breaker alert\s*1\s*\d{4}-\d\d-\d\dT/, 'the alert, its count and when it resolved');
  await page.click('#accounts a[data-account="dash-browser"]');
  await page.waitForSelector('#ledger');
  assert.match(await page.textContent('#account-detail') ?? '', /available 380/);
  assert.match(await page.textContent('#ledger') ?? '', /usage\s*-120/);
  await page.selectOption('#inbox-status', 'failed');
  const replay = page.locator(`button[data-replay="${orphan.id}"]`);
  await replay.click();
  await page.waitForFunction((id) => document.querySelector(`#inbox`)?.textContent?.includes(id) === false || document.querySelector(`button[data-replay="${id}"]`)?.textContent !== 'Replay', orphan.id);
  const stored = await test.database.db.query<{ attempts: number }>('select attempts from webhook_events where id = $1', [orphan.id]);
  assert.equal(stored.rows[0]?.attempts, 1, 'the replay reset the event and tried it again');
  await page.click('#reconcile');
  await page.waitForFunction(() => document.querySelector('#reconciliations')?.textContent?.includes('done') === true);
  assert.ok((await page.locator('#chart rect.spent').count()) === 30);
  await page.screenshot({ path: `${process.env.TMPDIR ?? '/tmp'}/tally-dashboard.png`, fullPage: true });
  assert.equal(await page.textContent('#error'), '');
});
