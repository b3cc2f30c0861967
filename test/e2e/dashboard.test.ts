import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import { raiseAlert, resolveAlert } from '../../src/ops/alerts.js';
import {
  adminKey,
  appKey,
  createTestApp,
  fundedAccount,
  startWithFakeStripe,
  stopWithFakeStripe,
  viewerKey,
  type TestApp,
} from '../helpers/app.js';
import { entitlementsCatalog } from '../helpers/entitlements-catalog.js';
import type { FakeStripe } from '../helpers/fake-stripe.js';
import { checkoutSession, deliver, event, month, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

// The operators' dashboard in a real browser (Debian's Chromium driven by playwright-core),
// against a real Tally on a real PostgreSQL, with data made through the API. Each page is
// driven as an operator would: log in, read, act, log out. A screenshot of each page is saved
// to TALLY_TEST_ARTIFACTS (default: a folder under the system's temporary directory).
const chromiumPath = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const artifacts = process.env.TALLY_TEST_ARTIFACTS ?? join(tmpdir(), 'tally-dashboard-screenshots');
const planted = '<img src=x onerror="window.__pwned=1">';
const longId = `acct-${'x'.repeat(90)}-long-id`;
let test: TestApp;
let browser: Browser | undefined;
let base = '';
const pageErrors: string[] = [];

before(async () => {
  test = await createTestApp();
  base = await test.app.listen({ port: 0, host: '127.0.0.1' });
  mkdirSync(artifacts, { recursive: true });
  if (existsSync(chromiumPath)) {
    browser = await chromium.launch({
      executablePath: chromiumPath,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  }
});
after(async () => {
  await browser?.close();
  await test.close();
});

/** A fresh tab at the given width; any script error or blocked request fails the test that made it. */
async function openPage(width = 1280): Promise<Page> {
  assert.ok(browser);
  const page = await browser.newPage({ viewport: { width, height: 900 } });
  page.on('pageerror', (error) => pageErrors.push(error.message));
  // Refused calls (a wrong key, too few credits) are logged by the browser as failed loads;
  // anything else logged as an error (a script error, a blocked resource) is a defect.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) pageErrors.push(message.text());
  });
  return page;
}

async function logIn(page: Page, key: string, at = base): Promise<void> {
  await page.goto(`${at}/dashboard#/overview`);
  await page.fill('#key', key);
  await page.click('#login-form button[type="submit"]');
  await page.waitForSelector('[data-session="in"]');
}

/** Every form control has a label a screen reader announces, and every button a name. */
async function assertLabelled(page: Page): Promise<void> {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll('input, select, textarea, button')]
      .filter((element) => {
        if (element instanceof HTMLButtonElement) return (element.getAttribute('aria-label') ?? element.textContent ?? '').trim() === '';
        const control = element as HTMLInputElement;
        return control.labels === null || control.labels.length === 0;
      })
      .map((element) => element.outerHTML.slice(0, 80)),
  );
  assert.deepEqual(unlabelled, []);
}

/**
 * Nothing on the page reaches past the viewport's right edge, and the page does not scroll
 * sideways. A failure names the elements that reach past it, hidden ones included.
 */
async function assertNoOverflow(page: Page, width: number): Promise<void> {
  // No named functions inside: the test runner's compiler would wrap them in a helper the page lacks.
  const overflow = await page.evaluate((limit) => {
    const everything = [...document.querySelectorAll('body *')].filter(
      (element) => element.getBoundingClientRect().width > 0 && element.getBoundingClientRect().right > limit + 0.5,
    );
    // Text kept for screen readers only, and the chart's own overlays, are clipped away.
    const visible = everything.filter(
      (element) => element.closest('.visually-hidden, .skip') === null && element.parentElement?.closest('.u-wrap') == null,
    );
    return {
      scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
      wide: visible
        .slice(0, 5)
        .map((element) => `${element.tagName}.${element.className} ${Math.round(element.getBoundingClientRect().right)}`),
      anyWide: everything
        .slice(0, 5)
        .map((element) => `${element.tagName}.${element.className} ${Math.round(element.getBoundingClientRect().right)}`),
    };
  }, width);
  assert.deepEqual(overflow.wide, [], `no element reaches past the right edge of ${page.url()}`);
  assert.ok(overflow.scrollWidth <= width, `${page.url()} scrolls sideways: ${overflow.scrollWidth} px (${overflow.anyWide.join(', ')})`);
}

const figure = async (page: Page, id: string): Promise<string> => (await page.textContent(`[data-figure="${id}"]`))?.trim() ?? '';

/**
 * Waits until the element's text matches, then asserts it: each section of a page loads on its
 * own, so the text read right after another element appears may not have arrived yet. A
 * failure shows the text the element had when the wait ran out.
 */
async function seeText(page: Page, selector: string, pattern: RegExp, message?: string): Promise<void> {
  await page
    .waitForFunction(
      ([css, source, flags]) => new RegExp(source, flags).test(document.querySelector(css)?.textContent ?? ''),
      [selector, pattern.source, pattern.flags] as const,
      { timeout: 10_000 },
    )
    .catch(() => undefined);
  assert.match((await page.textContent(selector)) ?? '', pattern, message);
}
const grouped = (value: number): string => value.toLocaleString('en-US');

function skipWithoutBrowser(t: { skip(message: string): void }): boolean {
  if (browser !== undefined) return false;
  t.skip(`no Chromium at ${chromiumPath} (apt-get install chromium)`);
  return true;
}

describe('the page itself', () => {
  // Proves: the page and every library it loads come from Tally itself (no CDN: it works
  // offline), under a policy that allows no inline script.
  it('serves the page, its modules and its libraries from Tally, under a CSP without inline script', async () => {
    const page = await fetch(`${base}/dashboard`);
    assert.equal(page.status, 200);
    const policy = page.headers.get('content-security-policy') ?? '';
    assert.match(policy, /script-src 'self'(;|$)/);
    assert.doesNotMatch(policy, /unsafe-inline|unsafe-eval/);
    const html = await page.text();
    assert.doesNotMatch(html, /https?:\/\//, 'nothing is loaded from another host');
    for (const url of [
      '/dashboard/app.js',
      '/dashboard/vendor/preact.js',
      '/dashboard/vendor/hooks.js',
      '/dashboard/vendor/htm.js',
      '/dashboard/vendor/uplot.js',
      '/dashboard/vendor/uplot.css',
    ]) {
      const asset = await fetch(base + url);
      assert.equal(asset.status, 200, url);
      const text = await asset.text();
      assert.doesNotMatch(text, /\b(?:from|import)\s*["'][@A-Za-z][\w@/.-]*["']/, `${url} has no import a browser cannot resolve`);
    }
    assert.equal((await fetch(`${base}/v1/admin/overview`)).status, 401);
  });
});

describe('plans and settings in a browser', () => {
  // A Tally of its own whose catalog has a free plan (gpt-5-mini only, 50 credits a day) and a
  // plus plan (every meter, features, 20 credits a day), with Stripe faked for subscriptions.
  let plans: TestApp;
  let fake: FakeStripe;
  let plansBase = '';
  before(async () => {
    ({ test: plans, fake } = await startWithFakeStripe({ catalog: entitlementsCatalog() }));
    plansBase = await plans.app.listen({ port: 0, host: '127.0.0.1' });
  });
  after(() => stopWithFakeStripe(plans, fake));

  /** An account subscribed to plus through Stripe's events, its customer with a default card. */
  async function onPlus(accountId: string, status: string): Promise<void> {
    const customer = uniqueId('cus');
    const subscriptionId = uniqueId('sub');
    await fundedAccount(plans, accountId, 500);
    await deliver(
      plans,
      event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId })),
    );
    const start = Math.floor(plans.clock.now().getTime() / 1000);
    const object = subscription({
      id: subscriptionId,
      customer,
      status,
      price: 'price_plus_monthly',
      start,
      end: start + month,
      trialEnd: status === 'trialing' ? start + 7 * 86400 : null,
    });
    await deliver(plans, event('customer.subscription.created', object, { created: start }));
    await settleWebhooks(plans);
    fake.customers.set(customer, { invoice_settings: { default_payment_method: 'pm_card_visa' } });
  }

  // Proves: the account page shows the plan by its catalog name, where it comes from, its
  // meters, features, rate card and recurring grants with this period's grant, and its settings
  // (limits with what was spent and when they reset, the threshold, auto top-up with its failures
  // in a row), each as the API answers; an account without settings says so in words; the
  // overview's accounts per plan is the API's answer row by row.
  it("shows an account's plan, entitlements and settings, and the accounts per plan", async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(plans, 'plain-free', 0);
    await onPlus('plus-customer', 'active');
    await onPlus('plus-trial', 'trialing');
    const put = async (url: string, body: unknown) => {
      const answer = await plans.call('PUT', url, body);
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
    };
    await put('/v1/accounts/plus-customer/limits', { per_day: 100, per_month: 2500 });
    await put('/v1/accounts/plus-customer/low-balance-threshold', { threshold: 150 });
    await put('/v1/accounts/plus-customer/auto-top-up', { enabled: true, threshold: 50, pack_id: 'pack_1000', max_per_month: 3 });
    const spent = await plans.call('POST', '/v1/accounts/plus-customer/usage', { amount: 30, idempotency_key: uniqueId('u') });
    assert.equal(spent.status, 200, JSON.stringify(spent.body));
    // Two declined payments in a row, as the payer job counts them (auto-top-up tests cover how).
    await plans.database.db.query(`update auto_top_ups set failures_in_row = 2 where account_id = 'plus-customer'`);

    const page = await openPage();
    await logIn(page, adminKey, plansBase);
    await page.goto(`${plansBase}/dashboard#/accounts/plus-customer`);
    await page.waitForSelector('#plan-name');
    await seeText(page, '#plan-name', /^Plus \(plus\)$/);
    await seeText(page, '#plan-source', /Subscription \(its subscription is active or past due\)/);
    await seeText(page, '#plan-meters', /^Every meter$/);
    await seeText(page, '#plan-rate-card', /standard, version 1/);
    assert.equal(await page.getAttribute('#plan-rate-card a', 'href'), '#/rate-cards?card=standard&version=1');
    const cells = (selector: string) =>
      page.$$eval(`${selector} tbody tr`, (rows) =>
        rows.map((tr) =>
          [...tr.querySelectorAll('td')].map((td) => td.querySelector('.cell')?.textContent?.replace(/\s+/g, ' ').trim() ?? ''),
        ),
      );
    assert.deepEqual(await cells('#plan-features'), [
      ['projects', '10'],
      ['custom_agents', 'yes'],
    ]);
    const plan = (await plans.admin('GET', '/v1/admin/accounts/plus-customer/plan')).body;
    const grant = plan.recurring_grants[0].grant;
    assert.ok(grant !== null, 'the page load (its account read) gave the day’s grant');
    const today = plans.clock.now().toISOString().slice(0, 10);
    await seeText(page, '#recurring-grants tbody', /Plus \(plus\)\s*20\s*every UTC day/);
    await seeText(page, '#recurring-grants tbody', new RegExp(`from ${today} until`));
    // The day's spend came out of it first (it expires soonest): used up, as the API says.
    assert.deepEqual([grant.remaining, grant.state], [0, 'used_up']);
    await seeText(page, '#recurring-grants tbody', new RegExp(`0 of 20 left\\s*used up\\s*${grant.id}`));

    const limits = (await plans.call('GET', '/v1/accounts/plus-customer/limits')).body;
    assert.deepEqual(limits.spent, { day: 30, month: 30 });
    const limitRows = await cells('#spend-limits');
    assert.deepEqual(
      limitRows.map((row) => row.slice(0, 4)),
      [
        ['Day (UTC)', '100', '30', '70'],
        ['Month (UTC)', '2,500', '30', '2,470'],
      ],
    );
    assert.match(limitRows[0]?.[4] ?? '', new RegExp(limits.resets_at.day.slice(0, 10)), 'the day window resets when the API says');
    assert.match(limitRows[1]?.[4] ?? '', new RegExp(limits.resets_at.month.slice(0, 10)));
    await seeText(page, '#low-balance-threshold', /150 credits: a balance\.low event is sent when available falls below it/);
    await seeText(
      page,
      '#auto-top-up',
      /on\s*Auto top-up is on: it buys pack_1000 when available falls below 50 credits, at most 3 a month/,
    );
    await seeText(page, '#auto-top-up', /2 failed payments in a row \(3 turn it off\)/);
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'account-plan.png'), fullPage: true });

    // The same account once three failures turned auto top-up off.
    await plans.database.db.query(`update auto_top_ups set failures_in_row = 3, enabled = false where account_id = 'plus-customer'`);
    await page.click('.page-head button');
    await seeText(page, '#auto-top-up', /Auto top-up is off \(turned off after 3 failed payments in a row/);

    await page.goto(`${plansBase}/dashboard#/accounts/plain-free`);
    await page.waitForSelector('#plan-name');
    await seeText(page, '#plan-name', /^Free \(free\)$/);
    await seeText(page, '#plan-source', /Free plan \(no live subscription, so the catalog's free plan applies\)/);
    await seeText(page, '#plan-meters', /^openai\/gpt-5-mini$/);
    await seeText(page, '#recurring-grants tbody', /Free \(free\)\s*50\s*every UTC day.*50 of 50 left\s*live/s);
    await seeText(page, '#spend-limits', /No spend limits: spends are not capped per day or per month\. Spent today 0, this month 0/);
    await seeText(page, '#low-balance-threshold', /No low-balance threshold/);
    await seeText(page, '#auto-top-up', /Auto top-up is off: it was never set up for this account\./);

    await page.goto(`${plansBase}/dashboard#/overview`);
    await page.waitForSelector('#accounts-per-plan tbody tr');
    const perPlan = (await plans.admin('GET', '/v1/admin/plans')).body;
    const percent = (count: number) => `${((count / perPlan.accounts) * 100).toFixed(1)} %`;
    const expected = perPlan.plans.map(
      (row: { plan_id: string | null; name: string | null; free: boolean; accounts: number; subscription: number; trial: number }) => [
        row.plan_id === null
          ? 'No plan (no live subscription and no free plan, or a price outside the catalog)'
          : `${row.name} (${row.plan_id})${row.free ? ' free plan' : ''}`,
        grouped(row.accounts),
        row.free ? '—' : grouped(row.subscription),
        row.free ? '—' : grouped(row.trial),
        percent(row.accounts),
      ],
    );
    await seeText(page, '#accounts-per-plan caption', new RegExp(`each of the ${perPlan.accounts} accounts`));
    assert.deepEqual(await cells('#accounts-per-plan'), expected);
    assert.deepEqual(
      expected.map((row: string[]) => row.slice(0, 4)),
      [
        ['Free (free) free plan', '1', '—', '—'],
        ['Starter (starter)', '0', '0', '0'],
        ['Plus (plus)', '2', '1', '1'],
        ['Pro (pro)', '0', '0', '0'],
        ['No plan (no live subscription and no free plan, or a price outside the catalog)', '0', '0', '0'],
      ],
    );
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'overview-plans.png'), fullPage: true });
    await page.close();

    // At 420 px the new sections fit too.
    const narrow = await openPage(420);
    await logIn(narrow, viewerKey, plansBase);
    await narrow.waitForSelector('#accounts-per-plan tbody tr');
    await assertNoOverflow(narrow, 420);
    await narrow.goto(`${plansBase}/dashboard#/accounts/plus-customer`);
    await narrow.waitForSelector('#plan-features tbody tr');
    await narrow.waitForSelector('#spend-limits tbody tr');
    await assertNoOverflow(narrow, 420);
    await narrow.screenshot({ path: join(artifacts, 'account-plan-420.png'), fullPage: true });
    await narrow.close();
  });
});

describe('in a browser', () => {
  // Proves: empty lists say so in a sentence, on every page, before anything exists.
  it('says in words when a list is empty', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(test, 'empty-account', 0);
    const page = await openPage();
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/reconciliation`);
    await seeText(page, '#reconciliations', /No reconciliation has run yet/);
    await page.goto(`${base}/dashboard#/alerts`);
    await page.waitForSelector('#alerts-open');
    await seeText(page, '#alerts-open', /No open alerts: nothing needs attention/);
    await seeText(page, '#alerts-resolved', /No resolved alerts yet/);
    await page.goto(`${base}/dashboard#/inbox`);
    await page.waitForSelector('#inbox');
    await seeText(page, '#inbox', /No Stripe event has arrived yet/);
    await page.goto(`${base}/dashboard#/accounts?search=nobody-has-this`);
    await page.waitForSelector('#accounts');
    await seeText(page, '#accounts', /No account's id, email or Stripe customer starts with “nobody-has-this”/);
    await page.goto(`${base}/dashboard#/accounts/empty-account`);
    await page.waitForSelector('#ledger table');
    await seeText(page, '#ledger', /No ledger entries yet/);
    await seeText(page, '#live-grants', /No live grants/);
    await seeText(page, '#past-grants', /No past grants/);
    await seeText(page, '#holds-table', /No pending holds/);
    await page.waitForSelector('#meter-spend .empty-note');
    await seeText(page, '#meter-spend', /No spends from \d{4}-\d{2}-\d{2} to \d{4}-\d{2}-\d{2} \(the last 30 days, UTC\)/);
    assert.equal(await page.locator('#meter-spend-chart').count(), 0, 'no chart without spends');
    await page.waitForSelector('#account-events table');
    await seeText(page, '#account-events', /No events about this account yet/);
    await page.close();
  });

  // Proves: a wrong key and the app key are refused with words that say what to paste instead;
  // after a reload it is clear who is logged in; log-out forgets the key (also after a reload).
  it('logs in, stays logged in across a reload, and logs out forgetting the key', async (t) => {
    if (skipWithoutBrowser(t)) return;
    const page = await openPage();
    await page.goto(`${base}/dashboard`);
    await seeText(page, '[data-session="out"]', /You are logged out/);
    await page.fill('#key', 'not-a-key-at-all');
    await page.click('#login-form button[type="submit"]');
    await page.waitForSelector('#login-error');
    await seeText(page, '#login-error', /not accepted.*admin key \(TALLY_ADMIN_KEY\) or the viewer key/);
    await page.fill('#key', appKey);
    await page.click('#login-form button[type="submit"]');
    await page.waitForFunction(() => document.querySelector('#login-error')?.textContent?.includes('app key'));
    // From the keyboard alone: type the key, press Enter.
    await page.fill('#key', '');
    await page.focus('#key');
    await page.keyboard.type(adminKey);
    await page.keyboard.press('Enter');
    await page.waitForSelector('[data-session="in"]');
    await seeText(page, '[data-session="in"]', /Logged in with the admin key/);
    await page.reload();
    await page.waitForSelector('[data-session="in"]');
    await seeText(page, '[data-session="in"]', /Logged in with the admin key/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tally-dashboard-key')), adminKey, 'the key is in this tab only');
    assert.equal(await page.evaluate(() => localStorage.length + document.cookie.length), 0, 'and nowhere else');
    await page.click('#logout');
    await page.waitForSelector('[data-session="out"]');
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tally-dashboard-key')), null);
    assert.equal(await page.inputValue('#key'), '');
    await page.reload();
    await page.waitForSelector('[data-session="out"]');
    // A key saved in the tab that Tally no longer accepts (rotated meanwhile) is dropped, in words.
    await page.evaluate(() => sessionStorage.setItem('tally-dashboard-key', 'a-key-rotated-away'));
    await page.reload();
    await page.waitForSelector('#login-error');
    await seeText(page, '#login-error', /key saved in this tab is no longer accepted/);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('tally-dashboard-key')), null);
    await page.close();
  });

  // Proves: the pages are reached with the keyboard: Tab walks the navigation to "Log out", and
  // Enter on a link opens its page.
  it('is reachable from the keyboard', async (t) => {
    if (skipWithoutBrowser(t)) return;
    const page = await openPage();
    await logIn(page, adminKey);
    const reached: string[] = [];
    for (let step = 0; step < 12; step += 1) {
      await page.keyboard.press('Tab');
      reached.push(await page.evaluate(() => document.activeElement?.textContent?.trim() ?? ''));
    }
    for (const name of ['Overview', 'Accounts', 'Rate cards', 'Webhook inbox', 'Alerts', 'Reconciliation', 'Log out'])
      assert.ok(reached.includes(name), `${name} in ${reached.join(' | ')}`);
    await page.focus('nav a[href="#/accounts"]');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#account-search');
    // Focus moves once the new page has rendered, a moment after its first element appears.
    await page.waitForFunction(() => document.activeElement?.id === 'main', undefined, { timeout: 5_000 }).catch(() => undefined);
    assert.equal(await page.evaluate(() => document.activeElement?.id), 'main', 'focus moves to the new page');
    await page.close();
  });

  // Proves: the account list sorts by a column from its header and pages 50 at a time.
  it('sorts accounts from a column header and pages through them', async (t) => {
    if (skipWithoutBrowser(t)) return;
    for (let index = 0; index < 55; index += 1) await fundedAccount(test, `page-${String(index).padStart(3, '0')}`, index === 7 ? 999 : 0);
    const page = await openPage();
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/accounts`);
    await page.fill('#account-search', 'page-');
    await page.press('#account-search', 'Enter');
    await page.waitForFunction(() => document.querySelector('#accounts tbody tr td')?.textContent?.includes('page-000'));
    assert.equal(await page.locator('#accounts tbody tr').count(), 50);
    await page.click('nav.pager button:has-text("Next page")');
    await page.waitForFunction(() => document.querySelector('nav.pager')?.textContent?.includes('Accounts 51 to 55'));
    assert.equal(await page.locator('#accounts tbody tr').count(), 5);
    await page.click('#accounts th button:has-text("Available")');
    await page.waitForFunction(() => document.querySelector('#accounts tbody tr td')?.textContent?.includes('page-007'));
    assert.equal(await page.getAttribute('#accounts th[aria-sort]', 'aria-sort'), 'descending');
    assert.match(page.url(), /sort=available&order=desc/, 'the sort is in the address, so a reload keeps it');
    await page.screenshot({ path: join(artifacts, 'accounts.png'), fullPage: true });
    await page.close();
  });

  // Proves: the overview shows what the overview API answers (credits outstanding, debt,
  // webhooks, alerts), the breaker reads "not configured" without Stripe, and the chart has
  // axes, a legend, values on hover and 7/30/90-day ranges.
  it('shows the overview figures the API answers, and a chart with axes, legend, hover values and ranges', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(test, 'overview-a', 700);
    await fundedAccount(test, 'overview-b', 300);
    await test.call('POST', '/v1/accounts/overview-a/usage', { amount: 120, idempotency_key: uniqueId('u') });
    await test.call('POST', '/v1/accounts/overview-b/holds', { amount: 50, idempotency_key: uniqueId('h') });
    await raiseAlert(test.database.db.pool, {
      kind: 'test_alert',
      key: 'overview-open',
      severity: 'critical',
      message: 'an open alert for the overview',
    });
    const page = await openPage();
    await logIn(page, adminKey);
    await page.waitForSelector('[data-figure="available"]');
    const answer = (await test.admin('GET', '/v1/admin/overview')).body;
    assert.equal(await figure(page, 'available'), grouped(answer.credits.available));
    assert.equal(await figure(page, 'held'), grouped(answer.credits.held));
    assert.equal(await figure(page, 'debt'), grouped(answer.credits.debt));
    assert.equal(await figure(page, 'outstanding'), grouped(answer.credits.available + answer.credits.held));
    assert.equal(await figure(page, 'alerts-open'), grouped(answer.alerts.open));
    assert.equal(await figure(page, 'webhooks-received'), grouped(answer.webhooks.received));
    assert.ok(answer.credits.held >= 50 && answer.credits.available >= 830, 'the figures include the accounts just made');
    assert.equal(await figure(page, 'breaker'), 'not configured');
    await page.waitForSelector('#credits-chart .u-over');
    assert.ok((await page.locator('#credits-chart .u-axis').count()) >= 2, 'both axes are drawn');
    const legend = (await page.textContent('#credits-chart .u-legend')) ?? '';
    for (const name of ['Granted', 'Spent', 'Expired', 'Clawed back', 'Adjusted down']) assert.ok(legend.includes(name), name);
    const over = await page.locator('#credits-chart .u-over').boundingBox();
    assert.ok(over);
    await page.mouse.move(over.x + over.width - 2, over.y + over.height / 2);
    await page.waitForFunction(() =>
      /\d/.test(document.querySelector('#credits-chart .u-legend .u-series:nth-child(2) .u-value')?.textContent ?? ''),
    );
    const history = (await test.admin('GET', '/v1/admin/credit-totals?days=30')).body.days;
    const today = history[history.length - 1];
    assert.equal(
      (await page.textContent('#credits-chart .u-legend .u-series:nth-child(2) .u-value'))?.trim(),
      grouped(today.granted),
      'the hovered day shows its granted credits',
    );
    for (const days of [7, 90]) {
      await page.check(`input[name="overview-range"][value="${days}"]`);
      await page.waitForFunction((count) => document.querySelectorAll('#credits-chart details tbody tr').length === count, days);
    }
    await page.check('input[name="overview-range"][value="30"]');
    await page.waitForFunction(() => document.querySelectorAll('#credits-chart details tbody tr').length === 30);
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'overview.png'), fullPage: true });
    await resolveAlert(test.database.db.pool, 'overview-open');
    await page.close();
  });

  // Proves: a grant and an adjustment made in the page, each confirmed and with a reason, go
  // through the audited admin API and appear in the ledger with that reason; a pending hold is
  // voided from the page.
  it('grants and adjusts with a reason and a confirmation, and voids a hold', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(test, 'acting', 100);
    const hold = await test.call('POST', '/v1/accounts/acting/holds', { amount: 30, idempotency_key: uniqueId('h') });
    const page = await openPage();
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/accounts/acting`);
    await page.waitForSelector('#grant-form');
    await page.click('#grant-form button[type="submit"]');
    await seeText(page, '#grant-form', /whole number above 0/, 'an empty amount is refused in words');
    await page.fill('#grant-amount', '250');
    await page.click('#grant-form button[type="submit"]');
    await seeText(page, '#grant-form', /Enter a reason/, 'no grant without a reason');
    await page.fill('#grant-reason', 'ticket 4711: goodwill for the outage');
    await page.click('#grant-form button[type="submit"]');
    await page.waitForSelector('#grant-confirm');
    await seeText(
      page,
      '#grant-confirm',
      /Grant 250 promo credits to acting, never expiring, for the reason “ticket 4711: goodwill for the outage”\?/,
    );
    await page
      .waitForFunction(() => document.activeElement?.textContent === 'Confirm grant', undefined, { timeout: 5_000 })
      .catch(() => undefined);
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Confirm grant', 'focus moves to the confirmation');
    await page.click('#grant-confirm button.primary');
    await page.waitForFunction(() => document.querySelector('#ledger')?.textContent?.includes('ticket 4711: goodwill for the outage'));
    await seeText(page, '#ledger tbody tr:first-child', /grant.*\+250.*320.*admin.*ticket 4711/s);
    const entries = await test.database.db.query<{ actor: string; reason: string }>(
      `select actor, reason from entries where account_id = 'acting' and kind = 'grant' order by id desc limit 1`,
    );
    assert.deepEqual(entries.rows[0], { actor: 'admin', reason: 'ticket 4711: goodwill for the outage' });
    const audited = await test.database.db.query(
      `select 1 from audit_log where account_id = 'acting' and reason = 'ticket 4711: goodwill for the outage'`,
    );
    assert.equal(audited.rowCount, 1, 'the grant is in the audit trail');

    await page.fill('#adjust-amount', '-20');
    await page.fill('#adjust-reason', 'double charge corrected');
    await page.click('#adjust-form button[type="submit"]');
    await page.waitForSelector('#adjust-confirm');
    await seeText(page, '#adjust-confirm', /Take away 20 credits from acting \(−20\)/);
    await page.click('#adjust-confirm button.primary');
    await page.waitForFunction(() =>
      document.querySelector('#ledger tbody tr:first-child')?.textContent?.includes('double charge corrected'),
    );
    await seeText(page, '#ledger tbody tr:first-child', /adjustment.*−20.*300/s);

    await page.fill('#adjust-amount', '-5000');
    await page.fill('#adjust-reason', 'too much');
    await page.click('#adjust-form button[type="submit"]');
    await page.click('#adjust-confirm button.primary');
    await page.waitForSelector('#adjust-form .problem');
    await seeText(page, '#adjust-form .problem', /has only 300 credits available\. Enter a smaller amount/);

    await page.waitForSelector(`#holds-table button[aria-label="Void ${hold.body.hold_id}"]`);
    await page.click(`#holds-table button[aria-label="Void ${hold.body.hold_id}"]`);
    await page.click(`#void-${hold.body.hold_id} button.primary`);
    await page.waitForFunction(() => document.querySelector('#holds-table')?.textContent?.includes('No pending holds'));
    const voided = await test.database.db.query<{ status: string }>(`select status from holds where account_id = 'acting'`);
    assert.equal(voided.rows[0]?.status, 'voided');
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'account.png'), fullPage: true });
    await page.close();
  });

  // Proves: a failed Stripe event is found by status and type, shows its payload and attempts,
  // and a replay from the inbox applies it (the account gets the pack's credits).
  it('filters the webhook inbox, shows an event, and replays a failed one so that it is processed', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(test, 'replayed', 0);
    const session = event(
      'checkout.session.completed',
      checkoutSession({
        mode: 'payment',
        accountId: 'replayed',
        customer: uniqueId('cus'),
        paymentIntent: uniqueId('pi'),
        packId: 'pack_1000',
      }),
    );
    assert.equal((await deliver(test, session)).status, 200);
    await test.database.db.query(
      `update webhook_events set status = 'failed', attempts = 14, last_error = 'database timeout while applying' where id = $1`,
      [session.id],
    );
    const page = await openPage();
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/inbox`);
    await page.selectOption('#inbox-status', 'failed');
    await page.fill('#inbox-type', 'checkout.session.completed');
    await page.click('.filters button[type="submit"]');
    await page.waitForFunction((id) => document.querySelector('#inbox')?.textContent?.includes(id), session.id);
    await seeText(page, '#inbox', /failed.*14.*database timeout while applying/s);
    await page.click(`#inbox a[title="${session.id}"]`);
    await page.waitForSelector('#event-payload');
    await seeText(page, 'main', /Attempts\s*14/);
    await seeText(page, 'pre.json', /"tally_pack_id": "pack_1000"/);
    await page.screenshot({ path: join(artifacts, 'inbox-event.png'), fullPage: true });
    await page.goBack();
    await page.waitForSelector(`button[data-replay="${session.id}"]`);
    await page.screenshot({ path: join(artifacts, 'inbox.png'), fullPage: true });
    await page.click(`button[data-replay="${session.id}"]`);
    await page.waitForSelector('#inbox-notice');
    await seeText(page, '#inbox-notice', new RegExp(`Replayed ${session.id}: processed`));
    const stored = await test.database.db.query<{ status: string }>('select status from webhook_events where id = $1', [session.id]);
    assert.equal(stored.rows[0]?.status, 'processed');
    assert.equal((await test.call('GET', '/v1/accounts/replayed/balance')).body.available, 1000, 'the pack was granted by the replay');
    await page.close();
  });

  // Proves: the viewer key reads every page and is shown no action at all, and no personal
  // data: the account's email masked, a Stripe event without its payload.
  it('shows the viewer no actions and no personal data', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await fundedAccount(test, 'viewed', 40);
    await test.call('PUT', '/v1/accounts/viewed', { email: 'viewed.person@example.com' });
    await test.call('POST', '/v1/accounts/viewed/holds', { amount: 10, idempotency_key: uniqueId('h') });
    const stored = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', customer: uniqueId('cus'), paymentIntent: uniqueId('pi') }),
    );
    await deliver(test, stored);
    const page = await openPage();
    await logIn(page, viewerKey);
    await seeText(page, '[data-session="in"]', /viewer key \(read only\)/);
    await page.goto(`${base}/dashboard#/accounts/viewed`);
    await page.waitForFunction(() => document.querySelector('#holds-table tbody')?.textContent?.includes('hold_'));
    assert.equal(await page.locator('#account-actions, #grant-form, #adjust-form, button.void').count(), 0);
    await seeText(page, '#account-email', /^v\*\*\*@e\*\*\*\.com$/);
    await page.goto(`${base}/dashboard#/inbox/${stored.id}`);
    await seeText(page, '#payload-hidden', /not shown to the viewer key/);
    assert.equal(await page.locator('pre.json').count(), 0, 'no payload on the page');
    await page.goto(`${base}/dashboard#/inbox`);
    await page.waitForSelector('#inbox tbody tr');
    assert.ok((await page.locator('#inbox tbody tr').count()) > 0);
    assert.equal(await page.locator('button.replay').count(), 0);
    await page.goto(`${base}/dashboard#/reconciliation`);
    await page.waitForSelector('#reconciliation-title');
    assert.equal(await page.locator('#reconcile').count(), 0);
    await page.goto(`${base}/dashboard#/rate-cards`);
    await page.waitForSelector('[data-card="standard"]');
    await seeText(page, '[data-card="standard"] [data-fact="current"]', /version \d+, since/);
    assert.equal(await page.locator('[data-card="standard"] button, [data-card="standard"] form').count(), 0, 'rate cards are read only');
    await page.goto(`${base}/dashboard#/accounts/no-such-account`);
    await page.waitForSelector('.problem');
    await seeText(page, '.problem', /there is no such account\. Find it on the Accounts page/);
    await page.close();
  });

  // Proves: the rate cards page shows each card's version in effect, the one scheduled next and
  // the version history with who published each; a priced entry shows its meter, quantities,
  // exact cost and version, linked to that version; spend by meter is a chart with a legend and
  // the same totals as a table, the exact cost as the API answers it.
  it('shows rate cards and their versions, a priced entry, and spend by meter as a chart and a table', async (t) => {
    if (skipWithoutBrowser(t)) return;
    const volume = (await test.call('GET', '/v1/rate-cards')).body.rate_cards.find((card: { id: string }) => card.id === 'volume');
    const changed = { ...volume.rates, 'images/generate': { images: '3.000000000001' } };
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: changed })).status, 200);
    const tomorrow = new Date(test.clock.now().getTime() + 86400_000).toISOString();
    assert.equal((await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: volume.rates, effective_at: tomorrow })).status, 200);
    await fundedAccount(test, 'priced', 1000);
    const spend = async (body: Record<string, unknown>) => {
      const answer = await test.call('POST', '/v1/accounts/priced/usage', { ...body, idempotency_key: uniqueId('u') });
      assert.equal(answer.status, 200, JSON.stringify(answer.body));
      return answer.body;
    };
    const mini = await spend({ meter: 'openai/gpt-5-mini', quantities: { input_tokens: 5000, output_tokens: 1000 } });
    assert.deepEqual([mini.amount, mini.cost, mini.rate_card], [0, '0.325', { id: 'standard', version: 1 }]);
    await spend({ meter: 'openai/gpt-5', quantities: { output_tokens: 3000 } });
    await spend({ amount: 7 });

    const page = await openPage();
    await logIn(page, adminKey);
    await page.click('nav a[href="#/rate-cards"]');
    await page.waitForSelector('[data-card="volume"]');
    await seeText(page, '[data-card="standard"] h2', /standard\s*default/);
    await seeText(page, '[data-card="standard"]', /plan plus; and accounts whose plan names no card/);
    await seeText(page, '[data-card="standard"] [data-fact="current"]', /version 1, since .* published by the plan catalog/);
    await seeText(page, '[data-card="standard"] [data-fact="next"]', /none scheduled/);
    await seeText(page, '[data-card="standard"] table', /openai\/gpt-5\s*input_tokens\s*0\.000125/);
    await seeText(page, '[data-card="volume"] [data-fact="current"]', /version 2, since .* published by an operator/);
    await seeText(page, '[data-card="volume"] [data-fact="next"]', new RegExp(`version 3 from ${tomorrow.slice(0, 10)}`));
    await seeText(page, '[data-card="volume"] table', /images\s*3\.000000000001\s*3\.2\s*\(changes\)/, 'now and next, exactly');
    await page.click('[data-card="volume"] details.history summary');
    await seeText(page, '[data-card="volume"] details.history summary', /Version history \(3 versions\)/);
    await seeText(page, '[data-card="volume"] details.history tbody', /v3\s*next.*v2\s*current.*admin.*v1\s*superseded.*catalog/s);
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'rate-cards.png'), fullPage: true });

    await page.goto(`${base}/dashboard#/accounts/priced`);
    await page.waitForFunction(() => document.querySelector('#ledger')?.textContent?.includes('openai/gpt-5-mini'));
    const row = page.locator('#ledger tbody tr', { hasText: 'openai/gpt-5-mini' });
    await seeText(page, '#ledger', /openai\/gpt-5-mini\s*input_tokens 5,000 · output_tokens 1,000\s*cost 0\.325 · standard v1/);
    assert.equal((await row.locator('td[data-label="Amount"]').textContent())?.trim(), '0', 'a zero-credit spend keeps its entry');
    assert.equal((await row.locator('.cost').textContent())?.trim(), mini.cost, 'the exact cost, as the API answers it');

    await page.waitForSelector('#meter-spend-chart .u-over');
    const legend = (await page.textContent('#meter-spend-chart .u-legend')) ?? '';
    for (const name of ['openai/gpt-5', 'openai/gpt-5-mini', 'No meter (a plain amount)']) assert.ok(legend.includes(name), name);
    assert.match(
      (await page.getAttribute('#meter-spend-chart .chart-box', 'aria-label')) ?? '',
      /No meter \(a plain amount\) 7 in total, openai\/gpt-5 3 in total, openai\/gpt-5-mini 0 in total/,
      'the chart says its totals in words',
    );
    const totals = (await test.admin('GET', '/v1/admin/accounts/priced/meter-spend?days=30')).body.meters;
    const shown = await page.$$eval('#meter-spend > .table-wrap tbody tr', (rows) =>
      rows.map((tr) => [...tr.querySelectorAll('td')].map((td) => td.querySelector('.cell')?.textContent?.trim() ?? '')),
    );
    assert.deepEqual(
      shown,
      totals.map((total: { meter: string | null; credits: number; cost: string | null; spends: number }) => [
        total.meter ?? 'No meter (a plain amount)',
        grouped(total.credits),
        total.cost ?? '—',
        grouped(total.spends),
      ]),
    );
    assert.deepEqual(shown[2], ['openai/gpt-5-mini', '0', '0.325', '1']);
    await page.check('input[name="meter-spend-range"][value="7"]');
    await page.waitForFunction(() => document.querySelectorAll('#meter-spend-chart details tbody tr').length === 7);
    await assertLabelled(page);
    await page.screenshot({ path: join(artifacts, 'account-priced.png'), fullPage: true });

    // The version that priced the entry opens marked on the rate cards page.
    await row.locator('a', { hasText: 'standard v1' }).click();
    await page.waitForSelector('[data-card="standard"] .selected');
    await seeText(page, '[data-card="standard"] .notice', /Version 1 priced the entry you came from/);
    assert.equal(await page.getAttribute('[data-card="standard"] .selected', 'data-version'), '1');
    await page.close();
  });

  // Proves: markup planted in a name, metadata, a usage description, a grant reason and a Stripe
  // payload is shown as text and never runs, on every page that shows it; the policy is sent.
  it('renders hostile data as text: a planted <img onerror> never runs', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await test.call('PUT', '/v1/accounts/hostile', { name: planted, metadata: { note: planted } });
    await fundedAccount(test, 'hostile', 100, { reason: planted });
    await test.call('POST', '/v1/accounts/hostile/usage', { amount: 5, idempotency_key: uniqueId('u'), description: planted });
    const session = event(
      'checkout.session.completed',
      checkoutSession({ mode: 'payment', customer: uniqueId('cus'), paymentIntent: uniqueId('pi'), metadata: { note: planted } }),
    );
    await deliver(test, session);
    await test.database.db.query(`update webhook_events set status = 'failed', last_error = $2 where id = $1`, [session.id, planted]);
    const page = await openPage();
    const response = await page.goto(`${base}/dashboard`);
    assert.match(response?.headers()['content-security-policy'] ?? '', /script-src 'self'/);
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/accounts?search=hostile`);
    await page.waitForSelector('#accounts a[title="hostile"]');
    assert.ok(((await page.textContent('#accounts')) ?? '').includes(planted), 'the name shows as text');
    await page.goto(`${base}/dashboard#/accounts/hostile`);
    await page.waitForFunction((text) => document.querySelector('#ledger')?.textContent?.includes(text), planted);
    await page.click('#account-metadata summary');
    const shown = (await page.textContent('main')) ?? '';
    assert.ok(shown.includes(`"note": "${planted.replace(/"/g, '\\"')}"`), 'the metadata shows as text');
    await page.goto(`${base}/dashboard#/inbox/${session.id}`);
    await page.waitForSelector('#event-payload');
    assert.ok(((await page.textContent('main')) ?? '').includes(planted), 'the error and payload show as text');
    await page.goto(`${base}/dashboard#/inbox`);
    await page.waitForSelector(`#inbox a[title="${session.id}"]`);
    assert.equal(
      await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned),
      undefined,
      'the planted handler never ran',
    );
    assert.equal(await page.locator('img').count(), 0, 'no planted element exists');
    await page.close();
  });

  // Proves: at 420 px nothing scrolls sideways, even with a 100-character account id: ids are cut
  // with an ellipsis and whole on hover, and the ledger's time column stays in view.
  it('fits 420 px with a long account id: no sideways scroll, ids cut with the full id on hover', async (t) => {
    if (skipWithoutBrowser(t)) return;
    assert.ok(longId.length >= 100);
    await fundedAccount(test, longId, 5000);
    await test.call('POST', `/v1/accounts/${longId}/usage`, {
      amount: 1234,
      idempotency_key: `usage-${'k'.repeat(200)}`,
      description: 'a long key and a long id',
    });
    const page = await openPage(420);
    await logIn(page, adminKey);
    await page.waitForSelector('#credits-chart .u-over');
    await assertNoOverflow(page, 420);
    await page.screenshot({ path: join(artifacts, 'overview-420.png'), fullPage: true });
    await page.goto(`${base}/dashboard#/accounts?search=acct-xxx`);
    const link = page.locator(`#accounts a[title="${longId}"]`);
    await link.waitFor();
    const box = await link.boundingBox();
    assert.ok(box !== null && box.x + box.width <= 420, 'the id is cut to fit');
    assert.ok(await link.evaluate((element) => element.scrollWidth > element.clientWidth), 'and it is shown cut, with an ellipsis');
    await seeText(page, '#accounts td[data-label="Available"]', /3,766/, 'the balance stays in view');
    await assertNoOverflow(page, 420);
    await page.screenshot({ path: join(artifacts, 'accounts-420.png'), fullPage: true });
    await link.click();
    await page.waitForFunction(() => document.querySelector('#ledger')?.textContent?.includes('a long key and a long id'));
    await page.waitForSelector('#balance-chart .u-over');
    await page.waitForSelector('#meter-spend-chart .u-over');
    await assertNoOverflow(page, 420);
    const time = await page.locator('#ledger tbody tr:first-child td[data-label="Time"] time').boundingBox();
    assert.ok(time !== null && time.x + time.width <= 420, 'the time of an entry is in view');
    await page.screenshot({ path: join(artifacts, 'account-420.png'), fullPage: true });
    for (const [route, ready] of [
      ['inbox', '#inbox'],
      ['alerts', '#alerts-open'],
      ['reconciliation', '#reconciliation-title'],
      ['rate-cards', '[data-card="standard"]'],
    ]) {
      await page.goto(`${base}/dashboard#/${route}`);
      await page.waitForSelector(ready ?? '');
      await assertNoOverflow(page, 420);
    }
    await page.close();
  });

  // Proves: alerts show open and resolved apart; a reconciliation run from the page lists its
  // findings linked to their accounts and entries.
  it('shows alerts open and resolved, and runs a reconciliation whose findings link to accounts and entries', async (t) => {
    if (skipWithoutBrowser(t)) return;
    await raiseAlert(test.database.db.pool, {
      kind: 'test_alert',
      key: 'still-open',
      severity: 'warning',
      message: 'a warning still open',
    });
    await raiseAlert(test.database.db.pool, {
      kind: 'stripe_breaker_open',
      key: 'was-open',
      severity: 'critical',
      message: 'a breaker alert now resolved',
    });
    await resolveAlert(test.database.db.pool, 'was-open');
    // A balance that no longer equals its entries: what reconciliation exists to find.
    await fundedAccount(test, 'drifted', 10);
    await test.database.db.query(`update accounts set available = available + 7 where id = 'drifted'`);
    const page = await openPage();
    await logIn(page, adminKey);
    await page.goto(`${base}/dashboard#/alerts`);
    await page.waitForSelector('#alerts-open tbody tr');
    await seeText(page, '#alerts-open', /a warning still open/);
    assert.doesNotMatch((await page.textContent('#alerts-open')) ?? '', /now resolved/);
    await seeText(page, '#alerts-resolved', /a breaker alert now resolved/);
    await page.screenshot({ path: join(artifacts, 'alerts.png'), fullPage: true });
    await page.goto(`${base}/dashboard#/reconciliation`);
    await page.click('#reconcile');
    await page.waitForSelector('#reconciliations .run');
    await page.waitForSelector('#reconciliations a[title="drifted"]');
    await page.screenshot({ path: join(artifacts, 'reconciliation.png'), fullPage: true });
    // The finding names the account's latest entries; each opens with its account.
    const drifted = (await test.call('GET', '/v1/accounts/drifted/ledger')).body.entries[0].id;
    await page.click(`#reconciliations a[title="${drifted}"]`);
    await page.waitForSelector('main dl.facts');
    await seeText(page, '#entry-title', new RegExp(drifted));
    assert.equal(await page.getAttribute('main dl.facts a', 'title'), 'drifted');
    await page.goto(`${base}/dashboard#/reconciliation`);
    await page.click('#reconciliations a[title="drifted"]');
    await page.waitForSelector('#account-title');
    await seeText(page, '#account-title', /drifted/);
    await page.close();
  });

  it('raised no script error and no blocked request on any page', () => {
    assert.deepEqual(pageErrors, []);
  });
});
