import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { addMonths } from '../../src/billing/credit-rule.js';
import { createTestApp, fundedAccount, type TestApp } from '../helpers/app.js';
import {
  checkoutSession,
  deliver,
  dispute,
  event,
  invoice,
  invoicePayment,
  refund,
  settleWebhooks,
  subscription,
  uniqueId,
  type LineSpec,
} from '../helpers/stripe-events.js';

/**
 * The credit rule on plan, seat and interval changes: credits follow money, per credit period,
 * by billed time; grants round down, clawbacks round up. Every test drives signed webhooks
 * through the worker on a test clock that only moves forward.
 */
let test: TestApp;
const day = 86_400;

before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

const now = (): number => Math.floor(test.clock.now().getTime() / 1000);
/** Moves the clock forward to `at` (never back) and lets the worker run what became due. */
async function travelTo(at: number): Promise<void> {
  if (at > now()) test.clock.advanceSeconds(at - now());
  await settleWebhooks(test);
}

const grantsOf = async (accountId: string) =>
  (
    await test.database.db.query<{ source: string; amount: number; remaining: number; grant_key: string; expires_at: Date | null }>(
      'select source, amount, remaining, grant_key, expires_at from grants where account_id = $1 order by id',
      [accountId],
    )
  ).rows.map((grant) => ({ ...grant, amount: Number(grant.amount), remaining: Number(grant.remaining) }));
const available = async (accountId: string): Promise<number> =>
  (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available;
const statuses = async (accountId: string) =>
  (
    await test.database.db.query<{ status: string }>(
      `select status from webhook_events where payload->'data'->'object'->'parent'->'subscription_details'->>'subscription' in (select id from subscriptions where account_id = $1)`,
      [accountId],
    )
  ).rows.map((row) => row.status);

/** A subscriber linked to its Stripe customer, and a way to pay its invoices now. */
async function subscriber() {
  const accountId = uniqueId('acct');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  await fundedAccount(test, accountId, 0);
  await deliver(
    test,
    event('checkout.session.completed', checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId }), {
      created: now(),
    }),
  );
  await settleWebhooks(test);
  // Both events of a paid invoice, each twice: every move happens once.
  const pay = async (lines: LineSpec[], amountPaid = 1000, paymentIntent?: string) => {
    const paid = invoice({ customer, subscription: subscriptionId, lines, amountPaid });
    for (const type of ['invoice.paid', 'invoice.payment_succeeded', 'invoice.paid'])
      await deliver(test, event(type, paid, { created: now() }));
    if (paymentIntent !== undefined)
      await deliver(
        test,
        event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent, amount: amountPaid }), { created: now() }),
      );
    await settleWebhooks(test);
  };
  const mirror = async (status: string, price: string, start: number, end: number, extra: Record<string, unknown> = {}) => {
    await deliver(
      test,
      event(
        'customer.subscription.updated',
        { ...subscription({ id: subscriptionId, customer, status, price, start, end }), ...extra },
        { created: now() },
      ),
    );
    await settleWebhooks(test);
  };
  return { accountId, subscriptionId, pay, mirror };
}

const floorShare = (credits: number, part: number, whole: number) => Math.floor((credits * part) / whole);
const ceilShare = (credits: number, part: number, whole: number) => Math.ceil((credits * part) / whole);

describe('plan and seat changes inside a monthly period', () => {
  it('an upgrade on day 29 and a downgrade after it move only the credits of the time billed (no plan-change farming)', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_plus_monthly', start, end }], 4000);
    const upgradeAt = start + 29 * day;
    await travelTo(upgradeAt);
    await pay(
      [
        { price: 'price_plus_monthly', start: upgradeAt, end, proration: true, amount: -133 },
        { price: 'price_pro_monthly', start: upgradeAt, end, proration: true, amount: 667 },
      ],
      534,
    );
    const downgradeAt = upgradeAt + 12 * 3600;
    await travelTo(downgradeAt);
    // The downgrade's net is a credit on the customer's balance: Stripe marks the invoice paid with 0.
    await pay(
      [
        { price: 'price_pro_monthly', start: downgradeAt, end, proration: true, amount: -333 },
        { price: 'price_plus_monthly', start: downgradeAt, end, proration: true, amount: 67 },
      ],
      0,
    );
    const whole = end - start;
    const expected =
      4000 -
      ceilShare(4000, end - upgradeAt, whole) +
      floorShare(20000, end - upgradeAt, whole) -
      ceilShare(20000, end - downgradeAt, whole) +
      floorShare(4000, end - downgradeAt, whole);
    assert.equal(await available(accountId), expected);
    assert.ok(expected < 4000 + 20000 / 30, `about one day of pro beside the plus month, not the pro month: ${expected}`);
    const grants = await grantsOf(accountId);
    assert.ok(
      grants.every((grant) => grant.expires_at?.getTime() === end * 1000),
      'every credit of the period expires with it',
    );
  });

  it('a seat added mid-period grants its share; a seat removed claws back the unused share', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_plus_monthly', start, end }], 4000);
    const addedAt = start + 15 * day;
    await travelTo(addedAt);
    await pay([
      { price: 'price_plus_monthly', start: addedAt, end, proration: true, amount: -2000, quantity: 1 },
      { price: 'price_plus_monthly', start: addedAt, end, proration: true, amount: 6000, quantity: 3 },
    ]);
    assert.equal(await available(accountId), 4000 - 2000 + 6000, 'two more seats for half the period');
    const removedAt = start + 24 * day;
    await travelTo(removedAt);
    await pay(
      [
        { price: 'price_plus_monthly', start: removedAt, end, proration: true, amount: -2400, quantity: 3 },
        { price: 'price_plus_monthly', start: removedAt, end, proration: true, amount: 800, quantity: 1 },
      ],
      0,
    );
    assert.equal(await available(accountId), 8000 - 2400 + 800);
  });

  it('a renewal invoice of three seats grants three allowances', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    await pay([{ price: 'price_plus_monthly', start, end: start + 30 * day, quantity: 3 }], 12000);
    assert.equal(await available(accountId), 12000);
  });

  it("an invoice's lines move the same credits whatever order Stripe lists them in: the clawback of an upgrade takes from its own period, not from a pack", async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
      amount: 10000,
      source: 'promo',
      reason: 'a pack-like never-expiring grant',
      idempotency_key: uniqueId('promo'),
    });
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_plus_monthly', start, end }], 4000);
    const spent = await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 4000, idempotency_key: uniqueId('use') });
    assert.equal(spent.status, 200);
    const upgradeAt = start + 2 * day;
    await travelTo(upgradeAt);
    await pay([
      { price: 'price_plus_monthly', start: upgradeAt, end, proration: true, amount: -3733 },
      { price: 'price_pro_monthly', start: upgradeAt, end, proration: true, amount: 18667 },
    ]);
    const grants = await grantsOf(accountId);
    const promo = grants.find((grant) => grant.source === 'promo');
    const clawed = ceilShare(4000, end - upgradeAt, end - start);
    assert.equal(promo?.remaining, 10000, "the clawback took from the period's own grants (the pro proration grant), not the promo");
    const period = grants.filter(
      (grant) => grant.grant_key.startsWith('proration:') || grant.grant_key === `period:${subscriptionId}:si_test:${start}`,
    );
    assert.equal(
      period.reduce((sum, grant) => sum + grant.remaining, 0),
      floorShare(20000, end - upgradeAt, end - start) - clawed,
    );
  });

  it('a proration paid on the next renewal invoice (create_prorations) grants into the period current at payment', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_starter_monthly', start, end }], 1000);
    await travelTo(end + 60);
    const changedAt = start + 15 * day;
    await pay(
      [
        { price: 'price_plus_monthly', start: end, end: end + 30 * day },
        { price: 'price_starter_monthly', start: changedAt, end, proration: true, amount: -500 },
        { price: 'price_plus_monthly', start: changedAt, end, proration: true, amount: 2000 },
      ],
      5500,
    );
    const grants = await grantsOf(accountId);
    const late = grants.filter((grant) => grant.grant_key.startsWith('proration:'));
    assert.equal(late.length, 1, 'the positive line grants; the negative one claws back');
    assert.equal(late[0]?.amount, 2000);
    assert.equal(late[0]?.expires_at?.getTime(), (end + 30 * day) * 1000, 'expires with the period current at payment');
    assert.equal(grants.find((grant) => grant.grant_key === `period:${subscriptionId}:si_test:${end}`)?.amount, 4000);
    assert.equal(await available(accountId), 4000 + 2000 - 500, 'the starter period had expired: the clawback takes from the new period');
  });
});

describe('yearly plans follow every change', () => {
  it('a switch from yearly to monthly on day 40 ends the yearly schedule: no more Plus months beside the Pro periods', async () => {
    const { accountId, subscriptionId, pay, mirror } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000);
    const switchAt = start + 40 * day;
    await travelTo(switchAt);
    const monthStart = addMonths(start, 1);
    const monthEnd = addMonths(start, 2);
    await mirror('active', 'price_pro_monthly', switchAt, switchAt + 30 * day);
    await pay(
      [
        { price: 'price_plus_yearly', start: switchAt, end: yearEnd, proration: true, amount: -35000 },
        { price: 'price_pro_monthly', start: switchAt, end: switchAt + 30 * day },
      ],
      0,
    );
    const afterSwitch = await grantsOf(accountId);
    const clawed = ceilShare(4000, monthEnd - switchAt, monthEnd - monthStart);
    await travelTo(addMonths(start, 5) + 60);
    const later = (await grantsOf(accountId)).filter(
      (grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`) && Number(grant.grant_key.split(':').at(-1)) >= switchAt,
    );
    assert.deepEqual(
      later.map((grant) => grant.amount),
      [20000],
      'only the Pro period: no Plus month after the switch',
    );
    assert.equal(afterSwitch.filter((grant) => grant.source === 'subscription').length, 3, 'Plus months 1 and 2, and the Pro period');
    const entries = await test.database.db.query<{ amount: number }>(
      `select amount from entries where account_id = $1 and kind = 'clawback'`,
      [accountId],
    );
    assert.deepEqual(
      entries.rows.map((row) => Number(row.amount)),
      [-clawed],
      'the unused part of the current Plus month is clawed back',
    );
    const outcomes = await test.database.db.query<{ outcome: string }>(
      `select distinct outcome from yearly_schedule where subscription_id = $1 and month_start > to_timestamp($2) and month_start <= to_timestamp($3)`,
      [subscriptionId, switchAt, now()],
    );
    assert.deepEqual(
      outcomes.rows.map((row) => row.outcome),
      ['netted'],
    );
  });

  it('a yearly-to-yearly upgrade is applied at once (not retried to failure) and later months grant the new plan', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000);
    const upgradeAt = start + 40 * day;
    await travelTo(upgradeAt);
    await pay(
      [
        { price: 'price_plus_yearly', start: upgradeAt, end: yearEnd, proration: true, amount: -35000 },
        { price: 'price_pro_yearly', start: upgradeAt, end: yearEnd, proration: true, amount: 175000 },
      ],
      140000,
    );
    assert.ok(
      (await statuses(accountId)).every((status) => status === 'processed'),
      'no event waits or fails',
    );
    const monthStart = addMonths(start, 1);
    const monthEnd = addMonths(start, 2);
    const prorations = (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith('proration:'));
    assert.deepEqual(
      prorations.map((grant) => grant.amount),
      [floorShare(20000, monthEnd - upgradeAt, monthEnd - monthStart)],
    );
    await travelTo(addMonths(start, 3) + 60);
    const months = (await grantsOf(accountId))
      .filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`))
      .map((grant) => grant.amount);
    assert.deepEqual(months, [4000, 4000, 20000, 20000], 'Plus months 1-2, then Pro from month 3');
  });

  it("an operator's replay of a yearly invoice after months were granted grants nothing again", async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    await pay([{ price: 'price_plus_yearly', start, end: addMonths(start, 12) }], 40000);
    await travelTo(addMonths(start, 3) + 60);
    const before = await grantsOf(accountId);
    const events = await test.database.db.query<{ id: string }>(
      `select id from webhook_events where account_id = $1 and type = 'invoice.paid'`,
      [accountId],
    );
    assert.ok(events.rows.length > 0);
    for (const row of events.rows) assert.equal((await test.admin('POST', `/v1/admin/webhook-events/${row.id}/replay`)).status, 200);
    await settleWebhooks(test);
    assert.deepEqual(await grantsOf(accountId), before);
  });

  it('a cancelled yearly subscription grants no month after its end', async () => {
    const { accountId, subscriptionId, pay, mirror } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000);
    await travelTo(start + 50 * day);
    await mirror('canceled', 'price_plus_yearly', start, yearEnd, { ended_at: now() });
    await travelTo(addMonths(start, 4) + 60);
    const months = (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`));
    assert.equal(months.length, 2, 'months 1 and 2 only');
  });
});

describe('refunds of yearly payments', () => {
  const monthKeys = async (accountId: string, subscriptionId: string) =>
    (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`)).map((grant) => grant.amount);

  it('a partial refund on day 40 claws in proportion to the twelve months bought, cancelling the last months first; the same refund later claws the same; a failed refund gives the months back', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_yearly', start, end: addMonths(start, 12) }], 40000, paymentIntent);
    await travelTo(start + 40 * day);
    assert.equal(await available(accountId), 5000, 'month 2, and 1000 of unspent month 1 rolled over (the cap)');
    const partial = refund({ amount: 10000, paymentIntent, status: 'succeeded' });
    await deliver(test, event('refund.created', partial, { created: now() }));
    await settleWebhooks(test);
    const afterRefund = await available(accountId);
    assert.equal(afterRefund, 5000, 'floor(48000 × 100/400) = 12000 come out of months 10 to 12, not out of granted credits');
    await travelTo(addMonths(start, 2) + 60);
    await deliver(test, event('refund.updated', partial, { created: now() }));
    await settleWebhooks(test);
    const cancelled = await test.database.db.query<{ credits: number }>(
      `select coalesce(sum(credits), 0)::bigint as credits from yearly_schedule where line_key = $1`,
      [`refund:${partial.id}`],
    );
    assert.equal(Number(cancelled.rows[0]?.credits), -12000, 'the refund seen again after another month claws the same, once');
    await deliver(test, event('refund.updated', { ...partial, status: 'failed' }, { created: now() }));
    await settleWebhooks(test);
    await travelTo(addMonths(start, 11) + 60);
    assert.deepEqual(
      await monthKeys(accountId, subscriptionId),
      Array.from({ length: 12 }, () => 4000),
      'the failed refund scheduled months 10 to 12 again',
    );
  });

  it('a full refund of a yearly payment cancels every month not granted and claws back the granted ones', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_yearly', start, end: addMonths(start, 12) }], 40000, paymentIntent);
    await travelTo(start + 40 * day);
    await deliver(test, event('refund.created', refund({ amount: 40000, paymentIntent, status: 'succeeded' }), { created: now() }));
    await settleWebhooks(test);
    const balance = (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;
    assert.equal(balance.available, 0);
    assert.equal(
      balance.debt,
      3000,
      'months 1 and 2 (8000) were granted: 40000 cancelled, 8000 clawed from the 5000 live (month 2 and the rollover), 3000 of debt',
    );
    await travelTo(addMonths(start, 6) + 60);
    assert.deepEqual(await monthKeys(accountId, subscriptionId), [4000, 4000], 'no month after the refund');
  });
});

describe('yearly months and the end of a subscription', () => {
  const monthKeys = async (accountId: string, subscriptionId: string) =>
    (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`)).map((grant) => grant.amount);

  it('an unpaid subscription still gets the months its yearly invoice paid for', async () => {
    const { accountId, subscriptionId, pay, mirror } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000);
    await travelTo(start + 40 * day);
    await mirror('unpaid', 'price_plus_yearly', start, yearEnd);
    await travelTo(addMonths(start, 3) + 60);
    await mirror('active', 'price_plus_yearly', start, yearEnd);
    await travelTo(addMonths(start, 4) + 60);
    assert.deepEqual(
      await monthKeys(accountId, subscriptionId),
      [4000, 4000, 4000, 4000, 4000],
      'months 1 to 5: none was skipped for good while unpaid',
    );
  });

  it('a full refund after the subscription ended cancels the months it never granted, whenever it is processed, and claws back only the granted ones', async () => {
    const early = await subscriber();
    const late = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    const intents = { early: uniqueId('pi'), late: uniqueId('pi') };
    await early.pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000, intents.early);
    await late.pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000, intents.late);
    await travelTo(start + 50 * day);
    for (const sub of [early, late]) await sub.mirror('canceled', 'price_plus_yearly', start, yearEnd, { ended_at: now() });
    await deliver(test, event('refund.created', refund({ amount: 40000, paymentIntent: intents.early }), { created: now() }));
    await settleWebhooks(test);
    await travelTo(addMonths(start, 5) + 60);
    await deliver(test, event('refund.created', refund({ amount: 40000, paymentIntent: intents.late }), { created: now() }));
    await settleWebhooks(test);
    for (const sub of [early, late]) {
      const cancelled = await test.database.db.query<{ credits: number }>(
        `select coalesce(-sum(credits), 0)::bigint as credits from yearly_schedule where subscription_id = $1 and line_key like 'refund:%'`,
        [sub.subscriptionId],
      );
      assert.equal(
        Number(cancelled.rows[0]?.credits),
        40000,
        'months 3 to 12, never granted (the subscription ended), are cancelled, not clawed',
      );
      const clawed = await test.database.db.query<{ amount: number }>(
        `select amount from entries where account_id = $1 and kind = 'clawback'`,
        [sub.accountId],
      );
      assert.deepEqual(
        clawed.rows.map((row) => Number(row.amount)),
        [-8000],
        'only the two granted months are clawed back',
      );
    }
  });

  it('a dispute won after the subscription ended gives back no month the subscription never reached', async () => {
    const { accountId, subscriptionId, pay, mirror } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], 40000, paymentIntent);
    await travelTo(start + 40 * day);
    const opened = dispute({ amount: 40000, paymentIntent });
    await deliver(test, event('charge.dispute.created', opened, { created: now() }));
    await settleWebhooks(test);
    await mirror('canceled', 'price_plus_yearly', start, yearEnd, { ended_at: now() });
    await travelTo(addMonths(start, 4) + 60);
    await deliver(test, event('charge.dispute.closed', { ...opened, status: 'won' }, { created: now() }));
    await settleWebhooks(test);
    await travelTo(addMonths(start, 6) + 60);
    const grants = await grantsOf(accountId);
    assert.deepEqual(await monthKeys(accountId, subscriptionId), [4000, 4000]);
    assert.ok(
      !grants.some((grant) => grant.grant_key.startsWith('dispute-won:') && grant.remaining > 0 && grant.source === 'subscription'),
      'no month of the ended subscription came back as live credits',
    );
  });
});

describe('a proration line whose period Tally never saw paid', () => {
  it('waits a while for the period invoice, then counts the period back from its end instead of failing', async () => {
    const { accountId, subscriptionId } = await subscriber();
    const customer =
      (await test.database.db.query<{ stripe_customer_id: string }>('select stripe_customer_id from accounts where id = $1', [accountId]))
        .rows[0]?.stripe_customer_id ?? '';
    const start = now();
    const end = addMonths(start, 1);
    const changedAt = start + 10 * day;
    await travelTo(changedAt);
    const upgrade = event(
      'invoice.paid',
      invoice({
        customer,
        subscription: subscriptionId,
        lines: [{ price: 'price_plus_monthly', start: changedAt, end, proration: true, amount: 2000 }],
      }),
      { created: now() },
    );
    await deliver(test, upgrade);
    await test.parts.worker.drain();
    const waiting = await test.database.db.query<{ status: string }>('select status from webhook_events where id = $1', [upgrade.id]);
    assert.equal(waiting.rows[0]?.status, 'pending', 'it waits for the period first');
    assert.equal(await available(accountId), 0);
    await test.database.db.query(
      `update webhook_events set received_at = received_at - interval '20 minutes', next_attempt_at = now() where id = $1`,
      [upgrade.id],
    );
    await settleWebhooks(test);
    assert.equal(await available(accountId), floorShare(4000, end - changedAt, end - start));
  });
});

describe('the yearly scheduler', () => {
  it('sets a failing month aside after bounded attempts with an alert, and grants the months behind it', async () => {
    const broken = await subscriber();
    const healthy = await subscriber();
    const start = now();
    await broken.pay([{ price: 'price_plus_yearly', start, end: addMonths(start, 12) }], 40000);
    await healthy.pay([{ price: 'price_plus_yearly', start: start + 3600, end: addMonths(start + 3600, 12) }], 40000);
    // A month whose plan grant cannot be made: more credits than a balance may hold.
    await test.database.db.query(
      `update yearly_schedule set credits = 9007199254740000 where subscription_id = $1 and month_start = to_timestamp($2)`,
      [broken.subscriptionId, addMonths(start, 1)],
    );
    await travelTo(addMonths(start + 3600, 1) + 60);
    for (let pass = 0; pass < 6; pass += 1) await test.parts.worker.drain();
    const healthyMonths = (await grantsOf(healthy.accountId)).filter((grant) => grant.grant_key.startsWith('period:'));
    assert.equal(healthyMonths.length, 2, 'the month behind the failing one was granted');
    const row = await test.database.db.query<{ outcome: string; attempts: number }>(
      `select outcome, attempts from yearly_schedule where subscription_id = $1 and month_start = to_timestamp($2)`,
      [broken.subscriptionId, addMonths(start, 1)],
    );
    assert.equal(row.rows[0]?.outcome, 'failed');
    const alerts = await test.database.db.query(`select 1 from alerts where kind = 'schedule_failed' and account_id = $1`, [
      broken.accountId,
    ]);
    assert.equal(alerts.rowCount, 1);
  });
});
