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
 * The credit rule's known gaps (issue 19, items 5 to 9): several plan items on one subscription,
 * every clawback of one payment bounded by its credits, refunds in proportion to the invoice's
 * total, yearly months of a subscription that ended, and lines of another subscription. Each test
 * drives signed webhooks through the worker on a test clock that only moves forward.
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
async function travelTo(at: number): Promise<void> {
  if (at > now()) test.clock.advanceSeconds(at - now());
  await settleWebhooks(test);
}
const grantsOf = async (accountId: string) =>
  (
    await test.database.db.query<{ source: string; amount: string; grant_key: string; expires_at: Date | null }>(
      'select source, amount, grant_key, expires_at from grants where account_id = $1 order by id',
      [accountId],
    )
  ).rows.map((grant) => ({ ...grant, amount: Number(grant.amount) }));
const balance = async (accountId: string): Promise<{ available: number; debt: number }> =>
  (await test.call('GET', `/v1/accounts/${accountId}/balance`)).body;
const clawedBack = async (accountId: string): Promise<number> =>
  Number(
    (
      await test.database.db.query<{ total: string }>(
        `select coalesce(-sum(amount), 0)::bigint as total from entries where account_id = $1 and kind = 'clawback'`,
        [accountId],
      )
    ).rows[0]?.total,
  );

interface PayOptions {
  amountPaid?: number;
  total?: number;
  paymentIntent?: string;
  subscription?: string;
}

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
  const pay = async (lines: LineSpec[], options: PayOptions = {}) => {
    const amountPaid = options.amountPaid ?? 1000;
    const paid = invoice({ customer, subscription: options.subscription ?? subscriptionId, lines, amountPaid, total: options.total });
    for (const type of ['invoice.paid', 'invoice.payment_succeeded']) await deliver(test, event(type, paid, { created: now() }));
    if (options.paymentIntent !== undefined)
      await deliver(
        test,
        event('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent: options.paymentIntent, amount: amountPaid }), {
          created: now(),
        }),
      );
    await settleWebhooks(test);
    return paid;
  };
  const cancel = async (price: string, start: number, end: number, endedAt: number) => {
    await deliver(
      test,
      event(
        'customer.subscription.deleted',
        {
          ...subscription({ id: subscriptionId, customer, status: 'canceled', price, start, end }),
          ended_at: endedAt,
          canceled_at: endedAt,
        },
        { created: now() },
      ),
    );
    await settleWebhooks(test);
  };
  return { accountId, customer, subscriptionId, pay, cancel };
}

describe('several plan items on one subscription (item 5)', () => {
  it('grants each item its own period under period:{subscription}:{item}:{start}', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    await pay(
      [
        { price: 'price_plus_monthly', start, end, subscriptionItem: 'si_plus' },
        { price: 'price_pro_monthly', start, end, subscriptionItem: 'si_pro' },
      ],
      { amountPaid: 6000 },
    );
    const keys = (await grantsOf(accountId)).map((grant) => [grant.grant_key, grant.amount]);
    assert.deepEqual(keys, [
      [`period:${subscriptionId}:si_plus:${start}`, 4000],
      [`period:${subscriptionId}:si_pro:${start}`, 20000],
    ]);
    assert.equal((await balance(accountId)).available, 24000);
  });

  it('an invoice granted under the old key before the upgrade grants nothing again when applied after it', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    // What the release before this one wrote for the invoice's first event.
    await test.database.db.query(
      `select tally_add_grant($1, 'subscription', 4000, 0, to_timestamp($2), $3, 'grant', $4, 'stripe', null, now())`,
      [
        accountId,
        end,
        `period:${subscriptionId}:${start}`,
        { subscription: subscriptionId, plan: 'plus', period_start: start, period_end: end },
      ],
    );
    await pay([{ price: 'price_plus_monthly', start, end, subscriptionItem: 'si_plus' }], { amountPaid: 1000 });
    assert.deepEqual(
      (await grantsOf(accountId)).map((grant) => grant.grant_key),
      [`period:${subscriptionId}:${start}`],
      'the period keeps its one grant, under its old key',
    );
    assert.equal((await balance(accountId)).available, 4000);
    const duplicate = await test.database.db
      .query(`select tally_add_grant($1, 'subscription', 4000, 0, to_timestamp($2), $3, 'grant', $4, 'stripe', null, now())`, [
        accountId,
        end,
        `period:${subscriptionId}:si_plus:${start}`,
        { subscription: subscriptionId, plan: 'plus', period_start: start, period_end: end },
      ])
      .then(
        () => undefined,
        (error: { code?: string }) => error.code,
      );
    assert.equal(duplicate, '23505', 'the database refuses a second period grant of one plan and period');
  });
});

describe('all clawbacks of one payment stay within its credits (item 6)', () => {
  it('a prorated cancellation, then a full refund of the period invoice, take back 4,000 of 4,000', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_monthly', start, end }], { amountPaid: 1000, paymentIntent });
    const cancelledAt = start + 15 * day;
    await travelTo(cancelledAt);
    // The final invoice of a prorated cancellation: the unused time goes to the customer balance.
    await pay([{ price: 'price_plus_monthly', start: cancelledAt, end, proration: true, amount: -500 }], { amountPaid: 0, total: -500 });
    assert.equal(await clawedBack(accountId), 2000);
    await deliver(test, event('refund.created', refund({ amount: 1000, paymentIntent }), { created: now() }));
    await settleWebhooks(test);
    assert.equal(await clawedBack(accountId), 4000, 'the refund takes only what the cancellation left');
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 0 });
  });

  it('the other order: a full refund, then the prorated cancellation, take back 4,000 of 4,000', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_monthly', start, end }], { amountPaid: 1000, paymentIntent });
    await travelTo(start + 10 * day);
    await deliver(test, event('refund.created', refund({ amount: 1000, paymentIntent }), { created: now() }));
    await settleWebhooks(test);
    const cancelledAt = start + 15 * day;
    await travelTo(cancelledAt);
    await pay([{ price: 'price_plus_monthly', start: cancelledAt, end, proration: true, amount: -500 }], { amountPaid: 0, total: -500 });
    assert.equal(await clawedBack(accountId), 4000);
    assert.equal((await balance(accountId)).debt, 0);
  });
});

describe('a refund and a dispute of one payment share its cap (item 6, found by mutation)', () => {
  it('a 75 % refund, then a lost dispute of the whole charge, take back 4,000 of 4,000 and leave no debt', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_monthly', start, end: start + 30 * day }], { amountPaid: 1000, paymentIntent });
    await deliver(test, event('refund.created', refund({ amount: 750, paymentIntent }), { created: now() }));
    await settleWebhooks(test);
    assert.equal(await clawedBack(accountId), 3000);
    const opened = dispute({ amount: 1000, paymentIntent, status: 'needs_response' });
    const disputed = event('charge.dispute.created', opened, { created: now() });
    await deliver(test, disputed);
    await settleWebhooks(test);
    assert.equal(await clawedBack(accountId), 4000, 'the dispute takes only the 1,000 the refund left');
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 0 });
    const { rows } = await test.database.db.query<{ reference: Record<string, unknown> }>(
      `select reference from entries where account_id = $1 and kind = 'clawback' order by id desc limit 1`,
      [accountId],
    );
    assert.equal(rows[0]?.reference.event, disputed.id, 'the clawback names the event that caused it');
    const alerts = await test.database.db.query('select 1 from alerts where alert_key = $1', [`debt:${accountId}`]);
    assert.equal(alerts.rowCount, 0, 'no debt, no account_in_debt alert');
    assert.equal(rows[0]?.reference.months_cancelled, 0);
  });

  it('a refund of credits already spent leaves debt and raises account_in_debt naming the debt and its cause', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_monthly', start, end: start + 30 * day }], { amountPaid: 1000, paymentIntent });
    const spent = await test.call('POST', `/v1/accounts/${accountId}/usage`, { amount: 3000, idempotency_key: uniqueId('spend') });
    assert.equal(spent.status, 200);
    const refunded = refund({ amount: 1000, paymentIntent });
    await deliver(test, event('refund.created', refunded, { created: now() }));
    await settleWebhooks(test);
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 3000 });
    const { rows } = await test.database.db.query<{ kind: string; severity: string; details: Record<string, unknown> }>(
      'select kind, severity, details from alerts where alert_key = $1',
      [`debt:${accountId}`],
    );
    assert.deepEqual(rows, [{ kind: 'account_in_debt', severity: 'warning', details: { debt: 3000, cause: `refund:${refunded.id}` } }]);
  });

  it('a yearly refund met by cancelling months not yet granted writes no clawback, counts once when Stripe sends it again, and a dispute takes only what is left', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], { amountPaid: 40000, paymentIntent });
    const cancelledMonths = async () =>
      Number(
        (
          await test.database.db.query<{ credits: string }>(
            `select coalesce(-sum(credits), 0)::bigint as credits from yearly_schedule where subscription_id = $1 and credits < 0`,
            [subscriptionId],
          )
        ).rows[0]?.credits,
      );
    // A quarter of 48,000 credits: 12,000, all of it from months 10 to 12, never granted.
    const refunded = refund({ amount: 10000, paymentIntent, status: 'succeeded' });
    await deliver(test, event('refund.created', refunded, { created: now() }));
    await settleWebhooks(test);
    const clawbackEntries = async () =>
      Number(
        (await test.database.db.query(`select count(*) from entries where account_id = $1 and kind = 'clawback'`, [accountId])).rows[0]
          ?.count,
      );
    assert.equal(await cancelledMonths(), 12000);
    assert.equal(await clawbackEntries(), 0, 'no clawback entry, not even of 0: the refund was met by months never granted');
    // The same refund again, as refund.updated: the key refund:{id} makes it count once.
    await deliver(test, event('refund.updated', refunded, { created: now() }));
    await settleWebhooks(test);
    assert.equal(await cancelledMonths(), 12000);
    assert.equal(await clawbackEntries(), 0);
    // A lost dispute of the whole charge: what is left of the payment's 48,000 is 36,000.
    await deliver(
      test,
      event('charge.dispute.created', dispute({ amount: 40000, paymentIntent, status: 'needs_response' }), { created: now() }),
    );
    await settleWebhooks(test);
    assert.equal(
      (await cancelledMonths()) + (await clawedBack(accountId)),
      48000,
      'the refund and the dispute together take the payment once',
    );
    assert.equal((await balance(accountId)).debt, 0);
  });
});

describe('a yearly proration after a refund takes only what the payment has left (item 6, found by mutation)', () => {
  it('a prorated cancellation on day 40 of a year 75 % refunded takes 12,000 across months, and nothing more', async () => {
    const { accountId, subscriptionId, pay } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], { amountPaid: 40000, paymentIntent });
    // 36,000 of the year's 48,000 credits go back with the refund: months 4 to 12, never granted.
    await deliver(test, event('refund.created', refund({ amount: 30000, paymentIntent }), { created: now() }));
    await settleWebhooks(test);
    const cancelAt = start + 40 * day;
    await travelTo(cancelAt);
    // The final invoice of a prorated cancellation: the unused 11 months go to the customer
    // balance, a line worth far more credits (about 42,700) than the payment has left (12,000).
    await pay([{ price: 'price_plus_yearly', start: cancelAt, end: yearEnd, proration: true, amount: -35000 }], {
      amountPaid: 0,
      total: -35000,
    });
    const taken = await test.database.db.query<{ scheduled: string; clawed: string }>(
      `select (select coalesce(-sum(credits), 0) from yearly_schedule where subscription_id = $1 and credits < 0)::bigint as scheduled,
              (select coalesce(-sum(amount), 0) from entries where account_id = $2 and kind = 'clawback')::bigint as clawed`,
      [subscriptionId, accountId],
    );
    const row = taken.rows[0]!;
    assert.equal(Number(row.scheduled) + Number(row.clawed), 48000, 'the refund and the proration take the payment once');
    const payment = await test.database.db.query<{ prorated_back: string }>(
      'select prorated_back from payments where payment_intent = $1',
      [paymentIntent],
    );
    assert.equal(Number(payment.rows[0]?.prorated_back), 12000);
    assert.equal((await balance(accountId)).debt, 0);
    // The months the cap cut stay untouched when the scheduler reaches them: nothing is taken
    // from the account as they start (before the fix, invoice.payment_succeeded scheduled them).
    const clawedBefore = await clawedBack(accountId);
    await travelTo(addMonths(start, 8) + 60);
    assert.equal(await clawedBack(accountId), clawedBefore);
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 0 });
  });
});

describe("a refund's share is of the invoice's total (item 7)", () => {
  it('refunding the 400 cents a card paid of a 1,000-cent invoice (600 from the customer balance) claws back 40 %', async () => {
    const { accountId, pay } = await subscriber();
    const start = now();
    const paymentIntent = uniqueId('pi');
    await pay([{ price: 'price_plus_monthly', start, end: start + 30 * day }], { amountPaid: 400, total: 1000, paymentIntent });
    await deliver(test, event('refund.created', refund({ amount: 400, paymentIntent }), { created: now() }));
    await settleWebhooks(test);
    assert.equal(await clawedBack(accountId), 1600);
    assert.equal((await balance(accountId)).available, 2400);
  });
});

describe('a yearly subscription that ended never keeps a later month (item 8)', () => {
  it('a cancellation ending exactly at a month start, arriving after the scheduler granted that month, claws it back', async () => {
    const { accountId, subscriptionId, pay, cancel } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], { amountPaid: 40000 });
    const monthTwo = addMonths(start, 1);
    await travelTo(monthTwo + 60);
    const granted = (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`));
    assert.equal(granted.length, 2, 'the scheduler granted month 2');
    assert.equal((await balance(accountId)).available, 5000, 'month 2 and the 1,000 rolled over from month 1');
    await cancel('price_plus_yearly', start, yearEnd, monthTwo);
    assert.equal(await clawedBack(accountId), 4000, 'month 2 is clawed back');
    assert.deepEqual(await balance(accountId), { account_id: accountId, available: 0, held: 0, debt: 0 }, 'and its rollover expired');
    await cancel('price_plus_yearly', start, yearEnd, monthTwo);
    assert.equal(await clawedBack(accountId), 4000, 'once');
  });

  it('a cancellation ending exactly at a month start, applied before the scheduler reaches it, grants no such month', async () => {
    const { accountId, subscriptionId, pay, cancel } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], { amountPaid: 40000 });
    const monthTwo = addMonths(start, 1);
    await travelTo(monthTwo - 3600);
    await cancel('price_plus_yearly', start, yearEnd, monthTwo);
    await travelTo(addMonths(start, 3) + 60);
    const months = (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`));
    assert.equal(months.length, 1, 'month 1 only: the subscription ended as month 2 began');
  });
});

describe('a yearly subscription that ended keeps the months it began (item 8, found by mutation)', () => {
  it('a cancellation ten days into month 3, applied before the scheduler reaches month 3, still grants month 3 and no later one', async () => {
    const { accountId, subscriptionId, pay, cancel } = await subscriber();
    const start = now();
    const yearEnd = addMonths(start, 12);
    await pay([{ price: 'price_plus_yearly', start, end: yearEnd }], { amountPaid: 40000 });
    const monthThree = addMonths(start, 2);
    await travelTo(monthThree - 3600);
    await cancel('price_plus_yearly', start, yearEnd, monthThree + 10 * day);
    await travelTo(addMonths(start, 4) + 60);
    const months = (await grantsOf(accountId)).filter((grant) => grant.grant_key.startsWith(`period:${subscriptionId}:`));
    assert.deepEqual(
      months.map((grant) => grant.amount),
      [4000, 4000, 4000],
      'months 1 to 3: the subscription was live when month 3 began',
    );
  });
});

describe('each line is booked to its own subscription (item 9)', () => {
  it("a proration line of another subscription on an invoice moves that subscription's credits at once", async () => {
    const { accountId, customer, subscriptionId, pay } = await subscriber();
    const other = uniqueId('sub');
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: other, customer, status: 'active', price: 'price_plus_monthly', start: now(), end: now() + 30 * day }),
        {
          created: now(),
        },
      ),
    );
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_plus_monthly', start, end }], { subscription: other });
    await pay([{ price: 'price_plus_monthly', start, end }]);
    const changedAt = start + 15 * day;
    await travelTo(changedAt);
    // The other subscription's pending proration lands on this subscription's next invoice.
    const paid = invoice({
      customer,
      subscription: subscriptionId,
      lines: [{ price: 'price_plus_monthly', start: changedAt, end, proration: true, amount: 1000, quantity: 2, subscription: other }],
    });
    await deliver(test, event('invoice.paid', paid, { created: now() }));
    await test.parts.worker.drain();
    const status = await test.database.db.query<{ status: string }>('select status from webhook_events where id = $1', [
      (await test.database.db.query<{ id: string }>(`select id from webhook_events where payload->'data'->'object'->>'id' = $1`, [paid.id]))
        .rows[0]?.id,
    ]);
    assert.equal(status.rows[0]?.status, 'processed', 'applied at once, not waiting for a period of the wrong subscription');
    const proration = (await grantsOf(accountId)).find((grant) => grant.grant_key.startsWith('proration:'));
    assert.equal(proration?.amount, Math.floor((4000 * 2 * (end - changedAt)) / (end - start)));
    const reference = await test.database.db.query<{ subscription: string }>(
      `select reference->>'subscription' as subscription from grants where account_id = $1 and grant_key like 'proration:%'`,
      [accountId],
    );
    assert.equal(reference.rows[0]?.subscription, other);
  });
});

describe('a proration paid after its period ended grants into the period current at payment', () => {
  it('a line of a subscription that ended, paid on the next subscription’s invoice after its period, expires with that invoice’s period', async () => {
    const { accountId, customer, subscriptionId, pay, cancel } = await subscriber();
    const start = now();
    const end = start + 30 * day;
    await pay([{ price: 'price_pro_monthly', start, end }], { amountPaid: 20000 });
    // Two seats more on day 15 with create_prorations, then cancelled at once without an invoice:
    // the pending line rides on the customer's next invoice, another subscription's.
    const changedAt = start + 15 * day;
    await travelTo(changedAt + day);
    await cancel('price_pro_monthly', start, end, changedAt + day);
    const paidAt = end + 2 * day;
    await travelTo(paidAt);
    const other = uniqueId('sub');
    const otherEnd = paidAt + 30 * day;
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: other, customer, status: 'active', price: 'price_plus_monthly', start: paidAt, end: otherEnd }),
        { created: now() },
      ),
    );
    await pay(
      [
        { price: 'price_pro_monthly', start: changedAt, end, proration: true, amount: 30000, quantity: 3, subscription: subscriptionId },
        { price: 'price_plus_monthly', start: paidAt, end: otherEnd },
      ],
      { subscription: other, amountPaid: 34000 },
    );
    const share = Math.floor((20000 * 3 * (end - changedAt)) / (end - start));
    const proration = (await grantsOf(accountId)).find((grant) => grant.grant_key.startsWith('proration:'));
    assert.equal(proration?.amount, share);
    assert.equal(proration?.expires_at?.getTime(), otherEnd * 1000, 'paid for, so usable until the period current at payment ends');
    const { available, debt } = await balance(accountId);
    assert.deepEqual({ available, debt }, { available: share + 4000, debt: 0 });
  });

  it('the year a switch to monthly replaced is not the period current at payment, however far it reached', async () => {
    const { accountId, customer, subscriptionId, pay, cancel } = await subscriber();
    const start = now();
    await pay([{ price: 'price_pro_yearly', start, end: addMonths(start, 12) }], { amountPaid: 200000 });
    const switchedAt = start + 2 * day;
    await travelTo(switchedAt);
    const monthEnd = switchedAt + 30 * day;
    await pay(
      [
        { price: 'price_pro_yearly', start: switchedAt, end: addMonths(start, 12), proration: true, amount: -195000 },
        { price: 'price_plus_monthly', start: switchedAt, end: monthEnd },
      ],
      { amountPaid: 0, total: -191000 },
    );
    // A second seat for the last 10 days, pending, then cancelled at once without an invoice.
    const changedAt = switchedAt + 20 * day;
    await travelTo(changedAt + day);
    await cancel('price_plus_monthly', switchedAt, monthEnd, changedAt + day);
    const paidAt = monthEnd + 5 * day;
    await travelTo(paidAt);
    const other = uniqueId('sub');
    const otherEnd = paidAt + 30 * day;
    await deliver(
      test,
      event(
        'customer.subscription.created',
        subscription({ id: other, customer, status: 'active', price: 'price_starter_monthly', start: paidAt, end: otherEnd }),
        { created: now() },
      ),
    );
    await pay(
      [
        {
          price: 'price_plus_monthly',
          start: changedAt,
          end: monthEnd,
          proration: true,
          amount: 1333,
          quantity: 2,
          subscription: subscriptionId,
        },
        { price: 'price_starter_monthly', start: paidAt, end: otherEnd },
      ],
      { subscription: other, amountPaid: 2333 },
    );
    const proration = (await grantsOf(accountId)).find((grant) => grant.grant_key.startsWith('proration:') && grant.amount > 0);
    assert.equal(proration?.amount, Math.floor((4000 * 2 * 10) / 30));
    assert.equal(proration?.expires_at?.getTime(), otherEnd * 1000, 'not the month of the replaced year');
  });
});
