import { createHash, createHmac } from 'node:crypto';
import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { checkoutSession, deliver, event, settleWebhooks, subscription, uniqueId } from '../helpers/stripe-events.js';

let test: TestApp;
before(async () => {
  test = await createTestApp();
});
after(async () => {
  await test.close();
});

async function customerWithHistory() {
  const accountId = uniqueId('gdpr');
  const customer = uniqueId('cus');
  const subscriptionId = uniqueId('sub');
  const email = `private.person.${accountId}@example.com`;
  const device = `device-${accountId}`;
  await test.call('PUT', `/v1/accounts/${accountId}`, {
    email,
    name: 'Private Person',
    metadata: { phone: '555-0100' },
    device_fingerprint: device,
  });
  await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
    amount: 100,
    source: 'promo',
    reason: 'welcome',
    idempotency_key: uniqueId('g'),
  });
  await test.call('POST', `/v1/accounts/${accountId}/usage`, {
    amount: 10,
    idempotency_key: uniqueId('u'),
    description: 'summary of Private Person’s notes',
    metadata: { doc: 'diary' },
  });
  await deliver(
    test,
    event('checkout.session.completed', {
      ...checkoutSession({ mode: 'subscription', accountId, customer, subscription: subscriptionId }),
      customer_details: { email },
    }),
  );
  await deliver(
    test,
    event(
      'customer.subscription.created',
      subscription({
        id: subscriptionId,
        customer,
        status: 'trialing',
        price: 'price_plus_monthly',
        start: 1893456000,
        end: 1894060800,
        trialEnd: 1894060800,
        accountId,
      }),
    ),
  );
  await settleWebhooks(test);
  return { accountId, subscriptionId, email, device };
}

it('exports every record kept on an account', async () => {
  const { accountId, subscriptionId, email } = await customerWithHistory();
  const response = await test.admin('GET', `/v1/accounts/${accountId}/export`);
  assert.equal(response.status, 200);
  const body = response.body;
  assert.equal(body.account.email, email);
  for (const section of [
    'grants',
    'entries',
    'holds',
    'subscriptions',
    'payments',
    'request_keys',
    'webhook_events',
    'trial_claims',
    'trial_refusals',
    'alerts',
    'audit_log',
  ]) {
    assert.ok(Array.isArray(body[section]), `export has ${section}`);
  }
  assert.equal(body.grants.length, 2, 'the promo grant and the trial');
  assert.equal(body.entries.length, 3);
  assert.equal(body.subscriptions[0].id, subscriptionId);
  assert.equal(body.webhook_events.length, 2);
  assert.equal(body.trial_claims.length, 3, 'account, email and device claims, as hashes');
  assert.equal((await test.call('GET', `/v1/accounts/${accountId}/export`)).status, 403, 'admin only');
  assert.equal((await test.admin('GET', '/v1/accounts/nobody/export')).status, 404);
});

it('erases personal data, keeps amounts, keys and claims, and audits the erasure', async () => {
  const { accountId, email, device } = await customerWithHistory();
  const before = await test.admin('GET', `/v1/accounts/${accountId}/export`);
  const response = await test.admin('DELETE', `/v1/accounts/${accountId}/personal-data`, { reason: 'GDPR request #77' });
  assert.equal(response.status, 200);
  assert.match(response.body.pseudonym, /^erased-[0-9a-f]{16}$/);
  // The pseudonym is keyed by the fingerprint secret: an unkeyed hash of the id would let a
  // database dump test guessed ids (often emails) against erased accounts.
  const unkeyed = `erased-${createHash('sha256').update(`tally-erasure:${accountId}`).digest('hex').slice(0, 16)}`;
  assert.notEqual(response.body.pseudonym, unkeyed);
  const { rows: secrets } = await test.database.db.query<{ value: string }>(`select value from tally_secrets where name = 'fingerprint'`);
  const keyed = createHmac('sha256', secrets[0]?.value ?? '')
    .update(`purpose:erasure:${accountId}`)
    .digest('hex')
    .slice(0, 16);
  assert.equal(response.body.pseudonym, `erased-${keyed}`);
  const after = await test.admin('GET', `/v1/accounts/${accountId}/export`);
  const text = JSON.stringify(after.body);
  for (const secret of [email, 'Private Person', '555-0100', 'diary', device]) {
    assert.ok(!text.includes(secret), `${secret} is gone`);
  }
  assert.equal(after.body.account.name, response.body.pseudonym);
  assert.deepEqual(
    after.body.entries.map((entry: { amount: number; idempotency_key: string }) => [entry.amount, entry.idempotency_key]),
    before.body.entries.map((entry: { amount: number; idempotency_key: string }) => [entry.amount, entry.idempotency_key]),
  );
  assert.equal(after.body.trial_claims.length, 3, 'claims stay, so erasure does not reopen a trial');
  assert.deepEqual((await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available, 590, 'promo 100 + trial 500 - 10');
  const erasure = after.body.audit_log.find((row: { action: string }) => row.action === 'erasure');
  assert.equal(erasure.reason, 'GDPR request #77');
  assert.equal(erasure.before.email, true, 'the audit names what was erased, not its value');
  const eligibility = await test.call('GET', `/v1/accounts/${accountId}/trial-eligibility?email=${encodeURIComponent(email)}`);
  assert.equal(eligibility.body.eligible, false);
  assert.equal((await test.admin('DELETE', `/v1/accounts/${accountId}/personal-data`, {})).status, 400, 'a reason is required');
  assert.equal(response.body.account_id_kept.looks_personal, false, 'an opaque id');
  await assert.rejects(
    test.database.db.query(`update entries set amount = 0 where account_id = $1`, [accountId]),
    /append-only/,
    'entries stay append-only outside erasure',
  );
});

it('exports and erases the webhook payloads that name the account without being applied to it, read from the database', async () => {
  // Proves: events stored without an account (ignored, failed or still pending) that name the
  // account's Stripe customer or subscription are in its export, and erasure scrubs them (the
  // exact body included), checked in the database rather than through the export.
  const { accountId, subscriptionId, email } = await customerWithHistory();
  const customer = (
    await test.database.db.query<{ stripe_customer_id: string }>('select stripe_customer_id from accounts where id = $1', [accountId])
  ).rows[0]?.stripe_customer_id;
  assert.ok(customer !== undefined);
  const ignored = event('customer.updated', {
    id: customer,
    object: 'customer',
    email,
    name: 'Private Person',
    address: { line1: '1 Private Street' },
  });
  const pending = event('invoice.payment_failed', {
    id: uniqueId('in'),
    object: 'invoice',
    customer,
    customer_email: email,
    customer_name: 'Private Person',
    parent: { subscription_details: { subscription: subscriptionId } },
  });
  await deliver(test, ignored);
  await settleWebhooks(test);
  await deliver(test, pending);
  const exported = (await test.admin('GET', `/v1/accounts/${accountId}/export`)).body;
  const exportedIds = exported.webhook_events.map((row: { id: string }) => row.id);
  assert.ok(exportedIds.includes(ignored.id) && exportedIds.includes(pending.id), 'both are in the export');
  assert.equal((await test.admin('DELETE', `/v1/accounts/${accountId}/personal-data`, { reason: 'the customer asked' })).status, 200);
  const rows = await test.database.db.query<{ id: string; text: string }>(
    `select id, coalesce(raw_body, '') || payload::text as text from webhook_events where id = any($1)`,
    [[ignored.id, pending.id]],
  );
  assert.equal(rows.rows.length, 2);
  for (const row of rows.rows) {
    assert.ok(!row.text.includes(email), `${row.id} keeps no email`);
    assert.ok(!row.text.includes('Private Person'), `${row.id} keeps no name`);
  }
});

it('exports priced spends with their exact costs as text and the versions that priced them, and erasure keeps them', async () => {
  const accountId = uniqueId('gdpr-priced');
  await test.call('PUT', `/v1/accounts/${accountId}`, { email: `${accountId}@example.com` });
  await test.admin('POST', `/v1/accounts/${accountId}/grants`, {
    amount: 10,
    source: 'promo',
    reason: 'r',
    idempotency_key: uniqueId('g'),
  });
  const spent = await test.call('POST', `/v1/accounts/${accountId}/usage`, {
    meter: 'openai/gpt-5-mini',
    quantities: { input_tokens: 1, output_tokens: 3 },
    idempotency_key: uniqueId('u'),
    description: 'private prompt',
  });
  assert.equal(spent.body.cost, '0.000625');
  await test.call('POST', `/v1/accounts/${accountId}/holds`, {
    meter: 'openai/gpt-5',
    quantities: { output_tokens: 10 },
    idempotency_key: uniqueId('h'),
  });
  const exported = (await test.admin('GET', `/v1/accounts/${accountId}/export`)).body;
  assert.equal(exported.account.carry, '0.000625', 'the carry as exact text');
  const usage = exported.entries.find((entry: { kind: string }) => entry.kind === 'usage');
  assert.deepEqual([usage.meter, usage.cost, usage.rate_card.id], ['openai/gpt-5-mini', '0.000625', 'standard']);
  assert.deepEqual([exported.holds[0].meter, exported.holds[0].cost], ['openai/gpt-5', '0.01']);
  assert.deepEqual(
    exported.rate_card_versions.map((version: { id: string; version: number }) => [version.id, version.version]),
    [['standard', usage.rate_card.version]],
    'the one version that priced both',
  );
  await test.admin('DELETE', `/v1/accounts/${accountId}/personal-data`, { reason: 'GDPR' });
  const erased = (await test.admin('GET', `/v1/accounts/${accountId}/export`)).body;
  assert.ok(!JSON.stringify(erased).includes('private prompt'));
  const kept = erased.entries.find((entry: { kind: string }) => entry.kind === 'usage');
  assert.deepEqual(
    [kept.meter, kept.quantities, kept.cost, kept.carry_after],
    [usage.meter, usage.quantities, usage.cost, usage.carry_after],
  );
});

it('says in its report that an account id which looks like an email is kept', async () => {
  // Proves erasure does not pretend to remove what it keeps: the id names the ledger's rows, so
  // an id that is an email stays, and the report says it is still personal data.
  for (const [accountId, looksPersonal] of [
    [`${uniqueId('jane')}@example.com`, true],
    [uniqueId('acct'), false],
  ] as const) {
    assert.equal((await test.call('PUT', `/v1/accounts/${encodeURIComponent(accountId)}`, { email: 'x@example.com' })).status, 200);
    const report = await test.admin('DELETE', `/v1/accounts/${encodeURIComponent(accountId)}/personal-data`, { reason: 'asked' });
    assert.equal(report.status, 200, accountId);
    assert.equal(report.body.account_id, accountId);
    assert.equal(report.body.account_id_kept.looks_personal, looksPersonal, accountId);
    assert.match(
      report.body.account_id_kept.note,
      looksPersonal ? /still personal data; give accounts opaque ids/ : /^the account id is kept/,
    );
  }
});
