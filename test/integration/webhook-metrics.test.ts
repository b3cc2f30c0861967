import assert from 'node:assert/strict';
import { after, before, it } from 'node:test';
import { createTestApp, type TestApp } from '../helpers/app.js';
import { checkoutSession, deliver, event, settleWebhooks, uniqueId } from '../helpers/stripe-events.js';

// Proves that the webhook outcome metric counts each applied event once, even when its
// transaction fails at commit (a serialization failure) and is run again: only the attempt
// that committed is counted.
let test: TestApp;
before(async () => {
  test = await createTestApp();
  // Fails the first commit that marks an event processed, with SQLSTATE 40001, as a
  // serialization failure would. A sequence, not a table, remembers it: it survives the rollback.
  await test.database.db.query(`
    create sequence metric_test_commits;
    create function metric_test_fail_first_commit() returns trigger language plpgsql as $$
    begin
      if nextval('metric_test_commits') = 1 then
        raise exception 'could not serialize access (planted by the test)' using errcode = '40001';
      end if;
      return null;
    end $$;
    create constraint trigger metric_test_fail_first_commit after update on webhook_events
      deferrable initially deferred for each row when (new.status = 'processed')
      execute function metric_test_fail_first_commit();`);
});
after(async () => {
  await test.close();
});

it('counts an event applied after a retried commit once', async () => {
  const accountId = uniqueId('metric');
  await test.call('PUT', `/v1/accounts/${accountId}`, {});
  const purchase = event(
    'checkout.session.completed',
    checkoutSession({ mode: 'payment', accountId, customer: uniqueId('cus'), paymentIntent: uniqueId('pi'), packId: 'pack_1000' }),
  );
  assert.equal((await deliver(test, purchase)).status, 200);
  await settleWebhooks(test);
  const commits = await test.database.db.query<{ value: string }>('select last_value::text as value from metric_test_commits');
  assert.equal(commits.rows[0]?.value, '2', 'the first commit failed and the transaction ran again');
  assert.equal((await test.call('GET', `/v1/accounts/${accountId}/balance`)).body.available, 1000, 'applied once');
  const metrics = String((await test.admin('GET', '/metrics')).body);
  const line = metrics
    .split('\n')
    .find((text) => text.startsWith('tally_webhook_events_total{type="checkout.session.completed",outcome="processed"}'));
  assert.equal(line?.split(' ').at(-1), '1', `counted once: ${line}`);
});
