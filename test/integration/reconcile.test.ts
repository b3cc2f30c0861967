import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import { FakeStripe } from '../helpers/fake-stripe.js';
import {
  checkoutSession,
  deliver,
  event,
  invoice,
  month,
  refund,
  settleWebhooks,
  subscription,
  uniqueId,
} from '../helpers/stripe-events.js';

// Reconciliation must name each kind of corruption, planted straight into the database with
// the guards turned off in this test's own database, with the right account and entries.
let test: TestApp;
let fake: FakeStripe;

before(async () => {
  fake = await new FakeStripe().start();
  test = await createTestApp({ stripeApiBase: fake.url });
  await test.database.db.query('alter table entries disable trigger entries_append_only');
  await test.database.db.query('alter table accounts drop constraint available_not_negative, drop constraint available_or_debt');
});
after(async () => {
  await test.close();
  await fake.stop();
});

const run = async (body: Record<string, unknown> = {}) => {
  const response = await test.admin('POST', '/v1/admin/reconcile', body);
  assert.equal(response.status, 200, JSON.stringify(response.body));
  return response.body as {
    run_id: number;
    finding_count: number;
    findings: { check: string; account_id: string; message: string; entry_ids: string[]; grant_ids?: string[]; stripe_ids?: string[] }[];
  };
};

async function healthy(accountId: string): Promise<void> {
  await fundedAccount(test, accountId, 100);
  await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 30, idempotency_key: uniqueId('use') });
  const hold = await test.call('POST', `/v1/accounts/${accountId}/holds`, { amount: 20, idempotency_key: uniqueId('hold') });
  await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { amount: 5 });
}

describe('reconciliation', () => {
  it('finds nothing in a healthy ledger, and stores its report', async () => {
    await healthy('rec-healthy');
    const report = await run();
    assert.equal(report.finding_count, 0, JSON.stringify(report.findings));
    const runs = await test.admin('GET', '/v1/admin/reconciliations');
    assert.equal(runs.body.runs[0].run_id, report.run_id);
    assert.equal(runs.body.runs[0].status, 'done');
  });

  it('names a balance that differs from its entries, with the account and its latest entries', async () => {
    await healthy('rec-balance');
    await test.database.db.query(`update accounts set available = available + 7 where id = 'rec-balance'`);
    const report = await run();
    const finding = report.findings.find((candidate) => candidate.check === 'balance_equals_entries');
    assert.equal(finding?.account_id, 'rec-balance');
    assert.match(finding?.message ?? '', /is 72 but the entries sum to 65/);
    const latest = await test.database.db.query<{ id: number }>(`select max(id) as id from entries where account_id = 'rec-balance'`);
    assert.ok(finding?.entry_ids.includes(`entry_${latest.rows[0]?.id}`));
    await test.database.db.query(`update accounts set available = available - 7 where id = 'rec-balance'`);
  });

  it('names a grant whose remaining differs from what its entries took, with those entries', async () => {
    await healthy('rec-grant');
    const { rows } = await test.database.db.query<{ id: number }>(`select id from grants where account_id = 'rec-grant'`);
    await test.database.db.query(`update grants set remaining = remaining - 3 where account_id = 'rec-grant'`);
    const report = await run();
    const finding = report.findings.find((candidate) => candidate.check === 'grant_remaining_equals_entries');
    assert.equal(finding?.account_id, 'rec-grant');
    assert.deepEqual(finding?.grant_ids, [`grant_${rows[0]?.id}`]);
    assert.ok((finding?.entry_ids.length ?? 0) >= 3, 'the grant, usage and hold entries that moved it');
    assert.ok(report.findings.some((candidate) => candidate.check === 'available_equals_grants' && candidate.account_id === 'rec-grant'));
    await test.database.db.query(`update grants set remaining = remaining + 3 where account_id = 'rec-grant'`);
  });

  it('names two subscription grants for one period', async () => {
    await fundedAccount(test, 'rec-period', 0);
    const reference = { subscription: 'sub_twice', period_start: 1893456000 };
    for (const key of ['period:sub_twice:1893456000', 'period:sub_twice:1893456000:copy']) {
      await test.database.db.query(
        `select tally_add_grant('rec-period', 'subscription', 4000, 0, null, $1, 'grant', $2, 'stripe', null, now())`,
        [key, reference],
      );
    }
    const report = await run();
    const finding = report.findings.find((candidate) => candidate.check === 'one_grant_per_period');
    assert.equal(finding?.account_id, 'rec-period');
    assert.equal(finding?.grant_ids?.length, 2);
    assert.equal(finding?.entry_ids.length, 2);
    assert.deepEqual(finding?.stripe_ids, ['sub_twice']);
  });

  it('names a negative balance', async () => {
    await fundedAccount(test, 'rec-negative', 0);
    await test.database.db.query(`update accounts set available = -5 where id = 'rec-negative'`);
    const report = await run();
    assert.ok(report.findings.some((candidate) => candidate.check === 'no_negative_balance' && candidate.account_id === 'rec-negative'));
    await test.database.db.query(`update accounts set available = 0 where id = 'rec-negative'`);
  });

  it('names a hold left pending long past its expiry, with its entry', async () => {
    await fundedAccount(test, 'rec-hold', 50);
    const hold = await test.call('POST', '/v1/accounts/rec-hold/holds', { amount: 10, idempotency_key: uniqueId('hold') });
    await test.database.db.query(`update holds set expires_at = now() - interval '1 hour' where 'hold_' || id = $1`, [hold.body.hold_id]);
    const report = await run();
    const finding = report.findings.find((candidate) => candidate.check === 'holds_resolved_or_live');
    assert.equal(finding?.account_id, 'rec-hold');
    assert.match(finding?.message ?? '', new RegExp(`${hold.body.hold_id} is pending`));
    assert.equal(finding?.entry_ids.length, 1);
  });

  it('raises an alert for findings and never changes the ledger', async () => {
    const before = await test.database.db.query(
      `select count(*)::int as entries, (select sum(available) from accounts)::bigint as available from entries`,
    );
    await run();
    const after = await test.database.db.query(
      `select count(*)::int as entries, (select sum(available) from accounts)::bigint as available from entries`,
    );
    assert.deepEqual(after.rows, before.rows);
    const alerts = await test.admin('GET', '/v1/admin/alerts');
    assert.ok(alerts.body.alerts.some((alert: { kind: string; count: number }) => alert.kind === 'reconciliation' && alert.count >= 1));
  });

  it('checks paid Stripe invoices and refunds of the last 30 days', async () => {
    const t0 = Math.floor(Date.now() / 1000);
    const accountId = uniqueId('acct');
    const paymentIntent = uniqueId('pi');
    await fundedAccount(test, accountId, 0);
    await deliver(
      test,
      event(
        'checkout.session.completed',
        checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent, packId: 'pack_1000' }),
      ),
    );
    await settleWebhooks(test);
    const missing = invoice({
      customer: uniqueId('cus'),
      subscription: 'sub_never_granted',
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + month }],
    });
    fake.invoices.push(missing);
    // A trial's $0 invoice: the trial rule grants that period, so the invoice has no grant of its own.
    const trialer = { accountId: uniqueId('acct'), customer: uniqueId('cus'), subscriptionId: uniqueId('sub') };
    await fundedAccount(test, trialer.accountId, 0);
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({
          id: trialer.subscriptionId,
          customer: trialer.customer,
          status: 'trialing',
          price: 'price_plus_monthly',
          start: t0,
          end: t0 + 7 * 86400,
          trialEnd: t0 + 7 * 86400,
          accountId: trialer.accountId,
        }),
      ),
    );
    const trialInvoice = invoice({
      customer: trialer.customer,
      subscription: trialer.subscriptionId,
      accountId: trialer.accountId,
      amountPaid: 0,
      lines: [{ price: 'price_plus_monthly', start: t0, end: t0 + 7 * 86400, amount: 0 }],
    });
    await deliver(test, event('invoice.paid', trialInvoice));
    await settleWebhooks(test);
    fake.invoices.push(trialInvoice);
    const unclawed = refund({ amount: 100, paymentIntent });
    fake.refunds.push(unclawed);
    const report = await run({ stripe: true });
    const invoiceFindings = report.findings.filter((candidate) => candidate.check === 'stripe_invoice_granted_once');
    assert.deepEqual(
      invoiceFindings.map((finding) => finding.stripe_ids?.[0]),
      [missing.id],
      "only the invoice that was never granted; not the trial's $0 invoice",
    );
    const refundFinding = report.findings.find((candidate) => candidate.check === 'stripe_refund_clawed_back');
    assert.equal(refundFinding?.account_id, accountId);
    assert.ok(refundFinding?.stripe_ids?.includes(unclawed.id));
  });

  /** Priced spends that cross credits, a priced hold captured below it: a healthy priced ledger. */
  async function healthyPriced(accountId: string): Promise<number[]> {
    await fundedAccount(test, accountId, 100);
    const spend = (output_tokens: number) =>
      test.call('POST', `/v1/accounts/${accountId}/usage`, {
        meter: 'openai/gpt-5-mini',
        quantities: { input_tokens: 700, output_tokens },
        idempotency_key: uniqueId('priced'),
      });
    const entries = [(await spend(3000)).body.entry_id, (await spend(4000)).body.entry_id];
    const hold = await test.call('POST', `/v1/accounts/${accountId}/holds`, {
      meter: 'openai/gpt-5',
      quantities: { output_tokens: 9000 },
      idempotency_key: uniqueId('priced-hold'),
    });
    await test.call('POST', `/v1/holds/${hold.body.hold_id}/capture`, { quantities: { output_tokens: 4321 } });
    entries.push((await spend(5000)).body.entry_id);
    return entries.map((entry: string) => Number(entry.replace('entry_', '')));
  }

  const pricedFindings = async (accountId: string) =>
    (await run()).findings.filter((finding) => finding.check === 'priced_entries_recompute' && finding.account_id === accountId);

  it("recomputes every priced entry's charge from its version: nothing to say about a healthy one", async () => {
    await healthyPriced('rec-priced');
    assert.deepEqual(await pricedFindings('rec-priced'), []);
  });

  it('names a priced entry whose cost, charge or carry is not what its version gives, and an account whose carry is not its last', async () => {
    const wrongCost = await healthyPriced('rec-priced-cost');
    await test.database.db.query('update entries set cost = cost + 0.0001 where id = $1', [wrongCost[1]]);
    const [costFinding] = await pricedFindings('rec-priced-cost');
    assert.deepEqual(costFinding?.entry_ids, [`entry_${wrongCost[1]}`]);
    assert.match(costFinding?.message ?? '', /cost 0\.8176 recomputes to 0\.8175 at standard version \d+/);

    const wrongCharge = await healthyPriced('rec-priced-charge');
    await test.database.db.query('update entries set amount = amount - 1 where id = $1', [wrongCharge[2]]);
    const [chargeFinding] = await pricedFindings('rec-priced-charge');
    assert.match(chargeFinding?.message ?? '', /charged 2 credits, not floor\(1\.0175 \+ carry 0\.756\)/);

    const wrongVersion = await healthyPriced('rec-priced-version');
    await test.database.db.query('update entries set rate_card_version = 999 where id = $1', [wrongVersion[0]]);
    const [versionFinding] = await pricedFindings('rec-priced-version');
    assert.match(versionFinding?.message ?? '', /names rate card standard version 999, which does not exist/);

    await healthyPriced('rec-priced-carry');
    await test.database.db.query(`update accounts set carry = 0.5 where id = 'rec-priced-carry'`);
    const [carryFinding] = await pricedFindings('rec-priced-carry');
    assert.match(carryFinding?.message ?? '', /carry is 0\.5 but its last priced charge left 0\.\d+/);
  });
});

describe('a large healthy ledger', () => {
  it('has no findings among 100k entries, checked in seconds', async () => {
    const fresh = await createTestApp();
    try {
      // 1,000 accounts, each with one grant of 1,000 and 99 usage entries of 1: consistent by
      // construction, written set-based so the test spends its time on reconciliation.
      await fresh.database.db.query(`insert into accounts (id, available) select 'bulk-' || n, 901 from generate_series(1, 1000) n`);
      await fresh.database.db.query(
        `insert into grants (account_id, source, amount, remaining, grant_key) select 'bulk-' || n, 'promo', 1000, 901, 'bulk' from generate_series(1, 1000) n`,
      );
      await fresh.database.db.query(
        `insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key, actor)
         select g.account_id, 'grant', 1000, 1000, array[g.id], array[1000::bigint], 'bulk', 'system' from grants g`,
      );
      await fresh.database.db.query(
        `insert into entries (account_id, kind, amount, balance_after, grant_ids, grant_credits, idempotency_key, actor)
         select g.account_id, 'usage', -1, 1000 - k, array[g.id], array[-1::bigint], 'bulk-use-' || k, 'app'
         from grants g cross join generate_series(1, 99) k`,
      );
      const started = Date.now();
      const report = await fresh.admin('POST', '/v1/admin/reconcile', {});
      const seconds = (Date.now() - started) / 1000;
      assert.equal(report.status, 200);
      assert.equal(report.body.summary.entries, 100_000);
      assert.equal(report.body.finding_count, 0, JSON.stringify(report.body.findings.slice(0, 3)));
      process.stdout.write(`# reconciliation of 100k entries: ${seconds.toFixed(2)} s\n`);
    } finally {
      await fresh.close();
    }
  });
});

describe('scheduled reconciliation', () => {
  it('runs once across two processes when due, then not again before the interval', async () => {
    const first = await createTestApp();
    const second = await createTestApp({ database: first.database });
    try {
      const started = await Promise.all([first.parts.operations.reconcileIfDue(), second.parts.operations.reconcileIfDue()]);
      assert.deepEqual([...started].sort(), [false, true]);
      const runs = await first.database.db.query<{ trigger: string; status: string }>('select trigger, status from reconciliation_runs');
      assert.deepEqual(runs.rows, [{ trigger: 'schedule', status: 'done' }]);
      assert.equal(await first.parts.operations.reconcileIfDue(), false, 'the daily run is done');
    } finally {
      await second.close();
      await first.close();
    }
  });
});
