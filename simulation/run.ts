import pg from 'pg';
import Stripe from 'stripe';
import { setTimeout as sleep } from 'node:timers/promises';
import { createTestApp, TestClock, webhookSecret, type TestApp } from '../test/helpers/app.js';
import { simulationCatalog } from './catalog.js';
import { createTestDatabase, type TestDatabase } from '../test/helpers/database.js';
import type { Answer, Fact, PricedSpend, StripeSubscription } from './history.js';
import { runModel, type ExpectedEvent, type ModelAccount, type ModelResult } from './model.js';
import { StripeWorld, intervalOf, type SimPayment } from './stripe.js';
import { DatabaseUnavailableError } from '../src/db/errors.js';
import { kindOf, type Priced, Random, ratesFor, type Step } from './workload.js';
import { monthsOf } from './model.js';

/**
 * The system under test and the auditor: plays a history against the real Tally (PostgreSQL,
 * the HTTP API through Fastify, signed webhooks, two Tally instances and their workers on one
 * database), then compares Tally with the reference model and checks the invariants.
 *
 * The simulator's stated assumption: delivery is chaotic within a window (each event delivered
 * 1 to 5 times, shuffled across all the events of the actions at one instant, split between two
 * instances that apply them at once, sometimes one instance closed and a new one started
 * mid-burst), but every window quiesces (every event delivered, both workers drained, due
 * holds and grants settled) before the virtual clock moves on, and in particular before it
 * passes a period or month boundary. App calls run after their instant's window quiesced.
 */
const day = 86400;
export const simulationStart = Date.parse('2030-01-01T00:00:00Z') / 1000;

export interface RunOptions {
  seed: number;
  /** Some seeds close one instance and start another mid-burst. */
  restarts: boolean;
  /** An operator replays a few applied events at the end. */
  replays: boolean;
}

export interface RunResult {
  failures: string[];
  facts: Fact[];
  steps: number;
  events: number;
}

interface Instances {
  database: TestDatabase;
  clock: TestClock;
  apps: TestApp[];
}

type StripeObject = Record<string, any>;

export async function runHistory(steps: Step[], options: RunOptions): Promise<RunResult> {
  const failures: string[] = [];
  const catalog = simulationCatalog();
  const world = await new StripeWorld(`s${options.seed.toString(36)}x`, simulationStart).start();
  const clock = new TestClock(simulationStart * 1000);
  const database = await createTestDatabase(30);
  const makeApp = async () => {
    // Waits (a proration whose period's invoice is not paid yet) pass in the world's virtual time.
    const app = await createTestApp({
      catalog,
      database,
      clock,
      stripeApiBase: world.url,
      workerOptions: { waitsInClockTime: true, pollIntervalMilliseconds: 1000 },
    });
    app.parts.startBackground();
    return app;
  };
  const system: Instances = { database, clock, apps: [await makeApp(), await makeApp()] };
  const chaos = new Random(options.seed ^ 0x5eed);
  const lifecycleCount = Math.max(1, ...steps.map((step) => step.lifecycle + 1));
  const accountOf = (lifecycle: number) => `acct_${options.seed.toString(36)}_${lifecycle}`;
  const answers = new Map<string, Answer>();
  const holdIds = new Map<string, string>();
  const pendingHolds = new Map<number, { key: string; step: Extract<Step, { kind: 'hold' }> }[]>();
  const holdExpiries: number[] = [];
  const replayed: string[] = [];
  let keyCounter = 0;
  let delivered = 0;
  const key = (what: string) => `${what}_${options.seed}_${(keyCounter += 1)}`;
  /** The step being played, for failure messages. */
  let current = 'set-up';
  const stepOf = new Map<string, string>();
  /**
   * When a step happens: `after` the step before, or, for the kinds that play boundaries, exactly
   * on the next period or month boundary (a spend), or just before the next month start of a
   * yearly plan (a cancellation whose webhooks arrive after it).
   */
  const targetOf = (step: Step, account: string): { target: number; exact: boolean } => {
    const plain = { target: world.now + step.after, exact: false };
    // The priced kinds, woven in at any instant, wait out a cancellation Stripe delivers late: the
    // window where the model and Tally read the month differently is open finding 283881's, which
    // boundary:usage plays on purpose; the priced calls should not multiply it.
    const late = world.lateDeliveryUntil();
    if (late !== undefined && (step.label?.startsWith('price') ?? false) && plain.target <= late) return { target: late + 1, exact: false };
    if (step.kind === 'usage' && step.atBoundary === true) {
      const boundary = world.nextBoundary();
      return boundary === undefined ? plain : { target: boundary, exact: true };
    }
    if (step.kind === 'cancel' && step.mode === 'late') {
      const month = nextMonthStart(account);
      return month === undefined || month - 300 <= world.now ? plain : { target: month - 300, exact: false };
    }
    return plain;
  };
  /**
   * The account's subscription as Stripe's delivered events tell it now (the model decides its
   * plan from it: its rate card, meters and recurring grants). Every window quiesces before app
   * calls, so Tally has applied them; a late cancellation counts from its delivery.
   */
  const subscriptionOf = (accountId: string): StripeSubscription => {
    const delivered = world.deliveredSubscription(accountId);
    if (delivered === undefined) return null;
    const { sub, status } = delivered;
    return {
      prices: [sub.price, ...(sub.extra === undefined ? [] : [sub.extra.price])],
      quantities: [sub.quantity, ...(sub.extra === undefined ? [] : [sub.extra.quantity])],
      status,
    };
  };
  /** The next month start of the account's yearly subscription, strictly inside its period. */
  const nextMonthStart = (account: string): number | undefined => {
    const sub = world.liveSubscription(account);
    if (sub === undefined || sub.status !== 'active' || intervalOf(sub.price) !== 'year') return undefined;
    return monthsOf(sub.period)
      .map((month) => month.start)
      .find((start) => start > world.now && start < sub.period.end);
  };

  const record = (where: string, status: number, body: unknown) => {
    if (status >= 500) failures.push(`${where} answered ${status}: ${JSON.stringify(body)}`);
  };
  const call = async (method: 'GET' | 'POST' | 'PUT', url: string, body?: unknown, admin = false) => {
    const app = chaos.pick(system.apps);
    const response = admin ? await app.admin(method, url, body) : await app.call(method, url, body);
    record(`${method} ${url}`, response.status, response.body);
    return response;
  };
  /**
   * A keyed app call, sometimes sent again (a client retrying after a lost answer) to the other
   * instance: the replay must answer as the first time did (invariant 7).
   */
  const keyedCall = async (method: 'POST', url: string, body: Record<string, unknown>) => {
    const first = await call(method, url, body);
    if (chaos.chance(0.2)) {
      const again = await call(method, url, body);
      const strip = (answer: { status: number; body: any }) =>
        JSON.stringify({
          status: answer.status,
          body: {
            ...answer.body,
            replayed: undefined,
            error: answer.body?.error === undefined ? undefined : { ...answer.body.error, replayed: undefined },
          },
        });
      if (strip(again) !== strip(first))
        failures.push(`${url} replayed with key ${String(body.idempotency_key)} answered ${strip(again)}, first ${strip(first)}`);
    }
    return first;
  };

  /**
   * Delivers the outbox: each event 1 to 5 times, shuffled, in concurrent bursts to either
   * instance; about one delivery in six is delayed until the others have been applied.
   */
  const deliverWindow = async () => {
    const window = world.outbox.splice(0);
    const all = chaos.shuffle(window.flatMap((event) => Array.from({ length: chaos.integer(1, 5) }, () => event)));
    const delayed = all.filter(() => chaos.chance(1 / 6));
    await deliverBursts(all.filter((copy) => !delayed.includes(copy)));
    if (delayed.length === 0) return;
    await drainBoth();
    await deliverBursts(delayed);
  };
  /** Bursts of concurrent deliveries; in restart seeds, one instance is closed and replaced during a burst. */
  const deliverBursts = async (copies: StripeObject[]) => {
    const restartAt = options.restarts && chaos.chance(0.3) ? chaos.integer(0, copies.length) : -1;
    for (let index = 0; index < copies.length; ) {
      const burst = copies.slice(index, index + chaos.integer(1, 8));
      const sending = Promise.all(burst.map((event) => deliver(chaos.pick(system.apps), event)));
      if (restartAt >= 0 && index <= restartAt && restartAt < index + burst.length) {
        profile.restarts += 1;
        const closing = system.apps[1]!;
        const replacement = makeApp();
        await closing.close();
        system.apps[1] = await replacement;
      }
      index += burst.length;
      await sending;
    }
  };
  /** One delivery; Stripe redelivers what was not acknowledged (to the instance still up). */
  const deliver = async (app: TestApp, event: StripeObject) => {
    const payload = JSON.stringify(event);
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const target = attempt === 0 ? app : system.apps[0]!;
      const response = await target.app
        .inject({
          method: 'POST',
          url: '/webhooks/stripe',
          headers: {
            'content-type': 'application/json',
            'stripe-signature': Stripe.webhooks.generateTestHeaderString({ payload, secret: webhookSecret }),
          },
          payload,
        })
        .catch((error: unknown) => ({ statusCode: 0, body: String(error) }));
      delivered += 1;
      // A closing instance may refuse (503) or fail the request: both are redelivered.
      if (response.statusCode !== 503 && response.statusCode !== 0)
        record(`webhook ${event.type as string}`, response.statusCode, response.body);
      if (response.statusCode === 200) return;
    }
    failures.push(`webhook ${event.id as string} (${event.type as string}) was never acknowledged`);
  };
  /**
   * Both instances' workers drain at once. A pass that cannot reach the database (the pool waits
   * too long on a loaded machine) is what the background worker logs and tries again: so does this.
   */
  const drainBoth = async () => {
    await Promise.all(
      system.apps.map((app) =>
        app.parts.worker.drain().catch((error: unknown) => {
          if (!(error instanceof DatabaseUnavailableError)) throw error;
          profile.unavailable += 1;
        }),
      ),
    );
  };
  /** Delivers until nothing is left to deliver or apply, then settles what is due now. */
  const quiesce = async () => {
    const deadline = Date.now() + 60_000;
    for (;;) {
      let started = Date.now();
      if (world.outbox.length > 0) await deliverWindow();
      profile.deliverMilliseconds += Date.now() - started;
      started = Date.now();
      await drainBoth();
      profile.drainMilliseconds += Date.now() - started;
      // Top-ups due are paid by both instances' jobs at once (each claims its own).
      await Promise.all(system.apps.map((app) => app.parts.topUps?.runOnce()));
      // An event waiting in virtual time for something later (its period's payment) is not due.
      const { rows } = await database.db.query<{ count: number }>(
        `select (select count(*) from webhook_events where status = 'pending' and next_attempt_at <= $1)
              + (select count(*) from top_ups where status = 'pending' and next_attempt_at <= $1)::int as count`,
        [clock.now()],
      );
      if (Number(rows[0]?.count ?? 0) === 0 && world.outbox.length === 0) break;
      if (Date.now() > deadline) {
        failures.push(`the window at ${iso(world.now)} did not quiesce: ${rows[0]?.count} events pending`);
        break;
      }
      profile.waits += 1;
      await sleep(20);
    }
    const started = Date.now();
    await system.apps[0]!.parts.ledger.settleDue(10_000);
    profile.settleMilliseconds += Date.now() - started;
  };
  const profile = {
    ticks: 0,
    quiesceMilliseconds: 0,
    waits: 0,
    deliverMilliseconds: 0,
    drainMilliseconds: 0,
    settleMilliseconds: 0,
    restarts: 0,
    unavailable: 0,
  };
  const tick = async (at: number) => {
    clock.advanceSeconds(at - clock.now().getTime() / 1000);
    world.facts.push({ kind: 'clock', at });
    world.advanceTo(at);
    const started = Date.now();
    await quiesce();
    profile.ticks += 1;
    profile.quiesceMilliseconds += Date.now() - started;
  };
  const nextBoundary = () => {
    const candidates = [world.nextBoundary(), ...holdExpiries.filter((at) => at > world.now)].filter(
      (at): at is number => at !== undefined,
    );
    return candidates.length === 0 ? undefined : Math.min(...candidates);
  };

  try {
    for (let lifecycle = 0; lifecycle < lifecycleCount; lifecycle += 1) {
      await call('PUT', `/v1/accounts/${accountOf(lifecycle)}`, {});
    }
    await tick(world.now);
    for (const [index, step] of steps.entries()) {
      current = `step ${index} (${kindOf(step)}, lifecycle ${step.lifecycle})`;
      const { target: wanted, exact } = targetOf(step, accountOf(step.lifecycle));
      let target = wanted;
      for (let boundary = nextBoundary(); boundary !== undefined && boundary <= target; boundary = nextBoundary()) {
        await tick(boundary);
        // Nothing the steps do lands exactly on a boundary (the assumption above needs an order),
        // except a step played on purpose at one: after the boundary's own window quiesced.
        if (boundary === target && !exact) target += 1;
      }
      if (target > world.now) await tick(target);
      const account = accountOf(step.lifecycle);
      await stripeSide(step, account);
      await quiesce();
      await appSide(step, account);
      // A spend may have asked for a top-up, which Tally's job pays within a second: the job
      // runs (and Stripe's answer is delivered) before the virtual clock moves on.
      await quiesce();
    }
    // The end: let every delayed action (recoveries, refund failures, dispute closings) happen.
    const end = world.now + 45 * day;
    for (let boundary = nextBoundary(); boundary !== undefined && boundary <= end; boundary = nextBoundary()) await tick(boundary);
    if (world.now < end) await tick(end);
    if (options.replays) await replaySome();
    await audit();
    if (process.env.SIMULATION_PROFILE !== undefined) console.log(`  profile: ${JSON.stringify(profile)}`);
  } finally {
    for (const app of system.apps) await app.close();
    await database.close();
    await world.stop();
    await dropDatabase(database.url);
  }
  return { failures, facts: world.facts, steps: steps.length, events: delivered };

  async function stripeSide(step: Step, account: string): Promise<void> {
    const sub = world.liveSubscription(account);
    const payment = (index: number, usable: (candidate: SimPayment) => boolean): SimPayment | undefined => {
      const candidates = world.paymentsOf(account).filter(usable);
      return candidates.length === 0 ? undefined : candidates[index % candidates.length];
    };
    switch (step.kind) {
      case 'subscribe': {
        if (sub !== undefined) return;
        const plan = catalog.plans.find((candidate) => candidate.prices.month === step.price || candidate.prices.year === step.price)!;
        const trialDays = step.trial ? plan.trial?.days : undefined;
        const checkout = await call('POST', `/v1/accounts/${account}/checkout`, {
          plan_id: plan.id,
          interval: intervalOf(step.price),
          ...(trialDays === undefined ? {} : { trial: true }),
          success_url: 'https://app.test/ok',
          cancel_url: 'https://app.test/no',
        });
        // A refused trial eligibility: the customer subscribes through the app's own code (Tally's metadata, no session).
        world.subscribe(
          account,
          step.price,
          step.quantity,
          trialDays,
          checkout.status === 200 ? (checkout.body.session_id as string) : undefined,
          step.extraPrice,
        );
        return;
      }
      case 'change': {
        // A subscription with two items is not changed (the simulator changes one item's price).
        if (sub === undefined || sub.status !== 'active' || sub.extra !== undefined) return;
        const price = step.price === '' ? sub.price : step.price;
        // Yearly prices change only with always_invoice or an interval change (see README: what is simulated).
        const behavior =
          intervalOf(sub.price) === 'year' && intervalOf(price) === 'year' && step.behavior === 'create_prorations'
            ? 'always_invoice'
            : step.behavior;
        if (price === sub.price && step.quantity === sub.quantity) return;
        world.change(sub, price, step.quantity, behavior);
        return;
      }
      case 'cancel':
        if (sub === undefined || sub.cancelAtPeriodEnd || sub.cancelAt !== null) return;
        if (step.mode === 'at_month_start' || step.mode === 'late') {
          const month = nextMonthStart(account);
          if (month === undefined) return;
          if (step.mode === 'at_month_start') world.cancelAt(sub, month);
          else if (month - world.now <= 300) world.cancelNowDeliveredLate(sub, month + 3600, month);
          return;
        }
        if (step.mode === 'period_end') world.cancelAtPeriodEnd(sub);
        else world.cancelNow(sub, step.mode === 'now_prorated');
        return;
      case 'fail_renewal':
        if (sub !== undefined && sub.status === 'active' && step.recoverAfter < (sub.period.end - sub.period.start) / 2)
          world.failNextRenewal(sub, step.recoverAfter);
        return;
      case 'pack': {
        const pack = catalog.credit_packs.find((candidate) => candidate.price === step.price)!;
        if (step.via === 'checkout') {
          const checkout = await call('POST', `/v1/accounts/${account}/checkout`, {
            pack_id: pack.id,
            success_url: 'https://app.test/ok',
            cancel_url: 'https://app.test/no',
          });
          if (checkout.status !== 200) return;
          world.buyPack(account, [{ price: step.price, quantity: 1 }], checkout.body.session_id as string, undefined);
          return;
        }
        const reference = await call('GET', `/v1/accounts/${account}/client-reference`);
        world.buyPack(
          account,
          [{ price: step.price, quantity: step.quantity }],
          undefined,
          reference.status === 200 ? (reference.body.client_reference_id as string) : undefined,
        );
        return;
      }
      case 'refund': {
        // Refunds and disputes take payments that bought whole periods or packs; a yearly one only when asked.
        // Yearly payments only when asked (refund:yearly), and never with a failing refund (see the model).
        const target = payment(
          step.payment,
          (candidate) =>
            !candidate.disputed &&
            candidate.refunded < candidate.amount &&
            candidate.kind !== 'proration' &&
            (candidate.kind === 'yearly') === step.yearly,
        );
        if (target === undefined || (target.kind === 'yearly' && step.failAfter !== undefined)) return;
        const amount = Math.max(1, Math.min(target.amount - target.refunded, Math.floor((target.amount * step.perMille) / 1000)));
        world.refund(target, amount, step.failAfter);
        return;
      }
      case 'card':
        world.setCard(account, step.behavior);
        return;
      case 'dispute': {
        const target = payment(
          step.payment,
          (candidate) => !candidate.disputed && candidate.refunded === 0 && candidate.kind !== 'proration' && candidate.kind !== 'yearly',
        );
        if (target !== undefined) world.dispute(target, step.outcome, step.closeAfter);
        return;
      }
      default:
        return;
    }
  }

  async function appSide(step: Step, account: string): Promise<void> {
    const remember = (name: string, response: { status: number; body: any }) => {
      const body = response.body ?? {};
      const available = body.available ?? body.error?.available;
      const code = body.error?.code;
      stepOf.set(name, current);
      answers.set(name, {
        status: response.status,
        ...(typeof code === 'string' ? { code } : {}),
        ...(typeof available === 'number' ? { available } : {}),
        ...(typeof body.cost === 'string' ? { cost: body.cost } : {}),
        ...(typeof body.rate_card?.version === 'number' ? { version: body.rate_card.version } : {}),
        ...(typeof body.amount === 'number' ? { amount: body.amount } : {}),
        ...(typeof body.error?.plan_id === 'string' ? { plan: body.error.plan_id } : {}),
      });
    };
    /** A priced spend of the step, with the account's subscription as Stripe has it now. */
    const pricedOf = (priced: Priced | undefined, accountId: string): PricedSpend | undefined =>
      priced === undefined ? undefined : { ...priced, subscription: subscriptionOf(accountId) };
    const spendBody = (amount: number, priced: PricedSpend | undefined) =>
      priced === undefined ? { amount } : { meter: priced.meter, quantities: priced.quantities };
    switch (step.kind) {
      case 'usage': {
        const usageKey = key('use');
        const priced = pricedOf(step.priced, account);
        world.facts.push({
          kind: 'usage',
          at: world.now,
          account,
          amount: step.amount,
          key: usageKey,
          subscription: subscriptionOf(account),
          ...(priced === undefined ? {} : { priced }),
        });
        remember(
          usageKey,
          await keyedCall('POST', `/v1/accounts/${account}/usage`, { ...spendBody(step.amount, priced), idempotency_key: usageKey }),
        );
        return;
      }
      case 'quote': {
        const quoteKey = key('quote');
        const priced = pricedOf(step.priced, account);
        world.facts.push({
          kind: 'quote',
          at: world.now,
          account,
          amount: step.amount,
          key: quoteKey,
          subscription: subscriptionOf(account),
          ...(priced === undefined ? {} : { priced }),
        });
        const response = await call('POST', `/v1/accounts/${account}/quote`, spendBody(step.amount, priced));
        remember(quoteKey, response);
        const answer = answers.get(quoteKey)!;
        if (response.status === 200) {
          answer.allowed = response.body.allowed as boolean;
          if (typeof response.body.reason === 'string') answer.code = response.body.reason;
        }
        return;
      }
      case 'price_change': {
        const changeKey = key('rates');
        const rates = ratesFor(step.seed);
        const effectiveAt = world.now + step.effectiveIn;
        const response = await call(
          'PUT',
          `/v1/admin/rate-cards/${step.card}`,
          { rates, ...(step.effectiveIn === 0 ? {} : { effective_at: iso(effectiveAt) }) },
          true,
        );
        if (response.status !== 200) {
          failures.push(`${current}: PUT /v1/admin/rate-cards/${step.card} answered ${response.status}: ${JSON.stringify(response.body)}`);
          return;
        }
        world.facts.push({ kind: 'rate_card', at: world.now, key: changeKey, card: step.card, rates, effectiveAt });
        stepOf.set(changeKey, current);
        answers.set(changeKey, { status: 200, version: response.body.version as number });
        return;
      }
      case 'batch': {
        // A batch spends for this lifecycle's account and its neighbours.
        const events = step.amounts.map((amount, index) => {
          const accountId = accountOf((step.lifecycle + index) % lifecycleCount);
          return {
            account_id: accountId,
            amount,
            priced: pricedOf(step.priced?.[index] ?? undefined, accountId),
            idempotency_key: key('batch'),
          };
        });
        world.facts.push({
          kind: 'batch',
          at: world.now,
          events: events.map((event) => ({
            account: event.account_id,
            amount: event.amount,
            key: event.idempotency_key,
            subscription: subscriptionOf(event.account_id),
            ...(event.priced === undefined ? {} : { priced: event.priced }),
          })),
        });
        const response = await call('POST', '/v1/usage/batch', {
          events: events.map((event) => ({
            account_id: event.account_id,
            ...spendBody(event.amount, event.priced),
            idempotency_key: event.idempotency_key,
          })),
        });
        if (response.status !== 200) {
          failures.push(`batch answered ${response.status}: ${JSON.stringify(response.body)}`);
          return;
        }
        (response.body.results as { status: number }[]).forEach((result, index) =>
          remember(events[index]!.idempotency_key, { status: result.status, body: result }),
        );
        return;
      }
      case 'hold': {
        const holdKey = key('hold');
        const priced = pricedOf(step.priced, account);
        world.facts.push({
          kind: 'hold',
          at: world.now,
          account,
          amount: step.amount,
          key: holdKey,
          expiresInSeconds: step.expiresIn,
          subscription: subscriptionOf(account),
          ...(priced === undefined ? {} : { priced }),
        });
        const response = await keyedCall('POST', `/v1/accounts/${account}/holds`, {
          ...spendBody(step.amount, priced),
          idempotency_key: holdKey,
          expires_in_seconds: step.expiresIn,
        });
        remember(holdKey, response);
        if (response.status === 201) {
          holdIds.set(holdKey, response.body.hold_id as string);
          holdExpiries.push(world.now + step.expiresIn);
          const list = pendingHolds.get(step.lifecycle) ?? [];
          pendingHolds.set(step.lifecycle, [...list, { key: holdKey, step }]);
        }
        return;
      }
      case 'limits': {
        const response = await call('PUT', `/v1/accounts/${account}/limits`, { per_day: step.perDay, per_month: step.perMonth });
        if (response.status === 200)
          world.facts.push({ kind: 'limits', at: world.now, account, perDay: step.perDay, perMonth: step.perMonth });
        else failures.push(`${current}: PUT limits answered ${response.status}: ${JSON.stringify(response.body)}`);
        return;
      }
      case 'admin_grant': {
        const grantKey = key('grant');
        const expiresAt = step.expiresInDays === null ? null : world.now + step.expiresInDays * day;
        world.facts.push({
          kind: 'admin_grant',
          at: world.now,
          account,
          key: grantKey,
          amount: step.amount,
          expiresAt,
          priority: step.priority,
        });
        const response = await call(
          'POST',
          `/v1/accounts/${account}/grants`,
          {
            amount: step.amount,
            source: step.source,
            reason: 'simulated goodwill',
            idempotency_key: grantKey,
            ...(expiresAt === null ? {} : { expires_at: iso(expiresAt) }),
            ...(step.priority === 0 ? {} : { priority: step.priority }),
          },
          true,
        );
        remember(grantKey, response);
        return;
      }
      case 'adjust': {
        const adjustKey = key('adjust');
        world.facts.push({ kind: 'adjustment', at: world.now, account, key: adjustKey, amount: step.amount });
        const response = await call(
          'POST',
          `/v1/accounts/${account}/adjustments`,
          { amount: step.amount, reason: 'simulated correction', idempotency_key: adjustKey },
          true,
        );
        remember(adjustKey, response);
        return;
      }
      case 'auto_top_up': {
        const response = await call('PUT', `/v1/accounts/${account}/auto-top-up`, {
          enabled: step.enabled,
          threshold: step.threshold,
          pack_id: step.pack,
          max_per_month: step.maxPerMonth,
        });
        if (response.status === 200)
          world.facts.push({
            kind: 'auto_top_up',
            at: world.now,
            account,
            enabled: step.enabled,
            threshold: step.threshold,
            pack: step.pack,
            maxPerMonth: step.maxPerMonth,
          });
        else if (response.status !== 409)
          failures.push(`${current}: PUT auto-top-up answered ${response.status}: ${JSON.stringify(response.body)}`);
        return;
      }
      case 'resolve': {
        const list = pendingHolds.get(step.lifecycle) ?? [];
        const next = list.shift();
        if (next === undefined || next.step.resolution === 'expire') return;
        const holdId = holdIds.get(next.key)!;
        if (next.step.resolution === 'capture' && next.step.priced !== undefined) {
          // What the call used: a share of each quantity the hold asked for (more than all, sometimes).
          const quantities = Object.fromEntries(
            Object.entries(next.step.priced.quantities).map(([dimension, most]) => [
              dimension,
              Math.floor((most * next.step.capturePerMille) / 1000),
            ]),
          );
          world.facts.push({ kind: 'capture', at: world.now, hold: next.key, amount: 0, quantities });
          const response = await call('POST', `/v1/holds/${holdId}/capture`, { quantities });
          remember(`capture:${next.key}`, { status: response.status, body: { ...response.body, amount: response.body?.captured } });
        } else if (next.step.resolution === 'capture') {
          const amount = Math.floor((next.step.amount * next.step.capturePerMille) / 1000);
          world.facts.push({ kind: 'capture', at: world.now, hold: next.key, amount });
          remember(`capture:${next.key}`, await call('POST', `/v1/holds/${holdId}/capture`, { amount }));
        } else {
          world.facts.push({ kind: 'void', at: world.now, hold: next.key });
          remember(`void:${next.key}`, await call('POST', `/v1/holds/${holdId}/void`));
        }
        return;
      }
      default:
        return;
    }
  }

  /** An operator replays a few applied events: their effects must stay exactly once (invariants 1 and 14). */
  async function replaySome(): Promise<void> {
    const { rows } = await database.db.query<{ id: string }>(
      `select id from webhook_events where status in ('processed', 'ignored') order by id`,
    );
    for (let count = 0; count < 5 && rows.length > 0; count += 1) {
      const event = chaos.pick(rows);
      replayed.push(event.id);
      const response = await call('POST', `/v1/admin/webhook-events/${event.id}/replay`, undefined, true);
      if (response.status !== 200) failures.push(`replay of ${event.id} answered ${response.status}: ${JSON.stringify(response.body)}`);
    }
    await quiesce();
  }

  async function audit(): Promise<void> {
    // The audit reads every account's balance (compareAccount), which gives the day's recurring grants.
    const accountIds = Array.from({ length: lifecycleCount }, (_, lifecycle) => accountOf(lifecycle));
    for (const accountId of accountIds)
      world.facts.push({ kind: 'balance_read', at: world.now, account: accountId, subscription: subscriptionOf(accountId) });
    const model = runModel(catalog, world.facts);
    for (const [name, expected] of model.answers) {
      const actual = answers.get(name);
      if (actual === undefined) continue;
      if (
        actual.status !== expected.status ||
        (expected.code !== undefined && !expected.code.split('|').includes(actual.code ?? '')) ||
        (expected.available !== undefined && actual.available !== undefined && actual.available !== expected.available) ||
        (expected.cost !== undefined && (actual.cost === undefined || decimalDiffers(actual.cost, expected.cost))) ||
        (expected.version !== undefined && actual.version !== expected.version) ||
        (expected.amount !== undefined && actual.amount !== expected.amount) ||
        (expected.allowed !== undefined && actual.allowed !== expected.allowed) ||
        (expected.plan !== undefined && actual.plan !== expected.plan)
      ) {
        failures.push(
          `${stepOf.get(name) ?? '?'}: app call ${name}: Tally answered ${JSON.stringify(actual)}, the model ${JSON.stringify(expected)}`,
        );
      }
    }
    for (const violation of model.violations) failures.push(`Stripe history: ${violation}`);
    const now = clock.now().getTime() / 1000;
    for (const [accountId, expected] of model.accounts) {
      await compareAccount(accountId, expected, now, model);
      await compareEvents(accountId, model.events.get(accountId) ?? [], model);
    }
    if (failures.length > 0 && replayed.length > 0) failures.push(`(the operator replayed ${replayed.join(', ')} at the end)`);
    const invariants = await database.db.query<{ check: string; count: number }>(
      `select 'balance differs from the fold of its entries' as check, count(*)::int as count from accounts a
         where a.available - a.debt <> coalesce((select sum(amount) from entries e where e.account_id = a.id), 0)
       union all select 'negative available, held or debt', count(*)::int from accounts where available < 0 or held < 0 or debt < 0
       union all select 'expired grants with credits left after the sweep', count(*)::int from grants where expires_at <= $1 and remaining > 0
       union all select 'webhook events failed', count(*)::int from webhook_events where status = 'failed'
       union all select 'webhook events still pending', count(*)::int from webhook_events where status = 'pending'
       union all select 'deadlocks (locks taken in different orders)', deadlocks::int from pg_stat_database where datname = current_database()`,
      [clock.now()],
    );
    for (const row of invariants.rows) if (row.count > 0) failures.push(`invariant: ${row.check}: ${row.count}`);
    if (invariants.rows.some((row) => row.check === 'webhook events failed' && row.count > 0)) {
      const failed = await database.db.query<{ id: string; type: string; last_error: string }>(
        `select id, type, last_error from webhook_events where status = 'failed' limit 5`,
      );
      for (const row of failed.rows) failures.push(`  failed event ${row.id} ${row.type}: ${row.last_error}`);
    }
    // The scheduled run may hold the reconciliation lock (409 reconciliation_running): ask again.
    let report = await call('POST', '/v1/admin/reconcile', { stripe: true }, true);
    for (let attempt = 1; report.status === 409 && attempt <= 20; attempt += 1) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      report = await call('POST', '/v1/admin/reconcile', { stripe: true }, true);
    }
    const findings = (report.body?.findings ?? []) as unknown[];
    if (report.status !== 200 || findings.length > 0)
      failures.push(`reconciliation: ${report.status} ${JSON.stringify(findings).slice(0, 600)}`);
    if (world.unknownCalls.length > 0)
      failures.push(`Tally made API calls the simulator's Stripe does not know: ${[...new Set(world.unknownCalls)].join(', ')}`);
  }

  /**
   * The event log (GET /v1/events?account_id=): every event the model expects (grants created,
   * trials granted, top-ups succeeded and failed) exactly once, and in the order the model saw
   * them happen (events of one instant may come in any order: delivery within a window is chaotic).
   */
  async function compareEvents(accountId: string, expected: ExpectedEvent[], model: ModelResult): Promise<void> {
    const logged: { sequence: number; type: string; data: any }[] = [];
    for (let after = 0, page = 0; page < 100; page += 1) {
      const response = await call('GET', `/v1/events?account_id=${accountId}&after=${after}&limit=500`);
      if (response.status !== 200) {
        failures.push(`${accountId} events: GET /v1/events answered ${response.status}`);
        return;
      }
      const events = response.body.events as { sequence: number | string; type: string; data: any }[];
      for (const event of events) logged.push({ sequence: Number(event.sequence), type: event.type, data: event.data });
      if (events.length === 0 || response.body.next_after === null || response.body.next_after === undefined) break;
      after = Number(response.body.next_after);
    }
    for (let index = 1; index < logged.length; index += 1)
      if (logged[index]!.sequence <= logged[index - 1]!.sequence)
        failures.push(`${accountId} events: sequence ${logged[index]!.sequence} after ${logged[index - 1]!.sequence}`);
    const tallyKeyOf = (subject: string) => model.requestKeys.get(subject);
    const matches = (event: ExpectedEvent, logged: { type: string; data: any }) => {
      if (event.type !== logged.type) return false;
      if (event.type === 'grant.created') {
        const requestKey = tallyKeyOf(event.subject);
        const raw = String(logged.data?.grant_key ?? '');
        const key = raw === event.subject.replace(/^period:([^:]+):[^:]+:(\d+)$/, 'period:$1:$2') ? event.subject : raw;
        return requestKey === undefined ? key === event.subject : key.endsWith(requestKey);
      }
      if (event.type === 'trial.granted') return true;
      return logged.data?.payment_intent === event.subject;
    };
    let lastAt = -Infinity;
    let lastLabel = '';
    const used = new Set<number>();
    for (const event of expected) {
      const found = logged.map((candidate, index) => ({ candidate, index })).filter(({ candidate }) => matches(event, candidate));
      const label = `${event.type} ${event.subject} (${iso(event.at)})`;
      if (found.length !== 1) {
        failures.push(`${accountId} events: ${label} logged ${found.length} times, the model expects it once`);
        continue;
      }
      used.add(found[0]!.index);
      if (event.type === 'topup.failed' && Boolean(found[0]!.candidate.data?.auto_top_up_disabled) !== Boolean(event.disabled))
        failures.push(
          `${accountId} events: ${label} says auto_top_up_disabled ${found[0]!.candidate.data?.auto_top_up_disabled}, the model ${event.disabled}`,
        );
    }
    // In order: the events the model expects, read in Tally's sequence order, happened at
    // non-decreasing instants.
    for (const [index, candidate] of logged.entries()) {
      if (!used.has(index)) continue;
      const event = expected.find((item) => matches(item, candidate))!;
      if (event.at < lastAt)
        failures.push(`${accountId} events: ${event.type} ${event.subject} (${iso(event.at)}) logged after ${lastLabel}`);
      lastAt = event.at;
      lastLabel = `${event.type} ${event.subject} (${iso(event.at)})`;
    }
    const wanted = new Set(['grant.created', 'trial.granted', 'topup.succeeded', 'topup.failed']);
    for (const [index, candidate] of logged.entries()) {
      if (used.has(index) || !wanted.has(candidate.type)) continue;
      if (candidate.type === 'grant.created' && model.voidable.has(String(candidate.data?.grant_key))) continue;
      failures.push(`${accountId} events: ${candidate.type} ${JSON.stringify(candidate.data)} logged, the model expects no such event`);
    }
  }

  async function compareAccount(accountId: string, expected: ModelAccount, now: number, result: ModelResult): Promise<void> {
    const balance = await call('GET', `/v1/accounts/${accountId}/balance`);
    const actual = { available: balance.body.available, held: balance.body.held, debt: balance.body.debt };
    const wanted = { available: expected.available, held: expected.held, debt: expected.debt };
    if (JSON.stringify(actual) !== JSON.stringify(wanted))
      failures.push(`${accountId} balance: Tally ${JSON.stringify(actual)}, model ${JSON.stringify(wanted)}`);
    // The sub-credit carry its priced spends left (SPEC: in [0, 1)), read where Tally keeps it.
    const carry = await database.db.query<{ carry: string }>(`select carry::text as carry from accounts where id = $1`, [accountId]);
    const carried = carry.rows[0]?.carry ?? '0';
    if (decimalDiffers(carried, expected.carry)) failures.push(`${accountId} carry: Tally ${carried}, model ${expected.carry}`);
    const { rows } = await database.db.query<{
      grant_key: string;
      amount: number;
      remaining: number;
      expires_at: number | null;
      event: string | null;
    }>(
      `select grant_key, amount, remaining, extract(epoch from expires_at)::bigint as expires_at, reference->>'event' as event from grants where account_id = $1`,
      [accountId],
    );
    // Operators' grants carry Tally's own key (SPEC names none): they are matched by their request key.
    const tallyKeyOf = (grantKey: string) => {
      const requestKey = result.requestKeys.get(grantKey);
      if (requestKey === undefined) return grantKey;
      return rows.find((row) => row.grant_key.endsWith(requestKey))?.grant_key ?? grantKey;
    };
    // A period grant keyed without its item (`period:{sub}:{start}`, before SPEC put the item in
    // the key) is compared as the one item's grant, and reported once, so that other findings show.
    const withoutItem = (key: string) => key.replace(/^period:([^:]+):[^:]+:(\d+)$/, 'period:$1:$2');
    const itemless = new Map<string, string>();
    for (const grant of expected.grants) {
      const legacy = withoutItem(grant.key);
      if (legacy === grant.key || rows.some((row) => row.grant_key === grant.key)) continue;
      if (rows.some((row) => row.grant_key === legacy)) itemless.set(legacy, itemless.has(legacy) ? '' : grant.key);
    }
    for (const row of rows) {
      const modelKey = itemless.get(row.grant_key);
      if (modelKey !== undefined && modelKey !== '') row.grant_key = modelKey;
    }
    if (itemless.size > 0)
      failures.push(
        `${accountId}: ${itemless.size} period grants keyed period:{subscription}:{start}, without the item SPEC's key carries (gap 5); compared as the item's below`,
      );
    const tally = new Map(rows.map((row) => [row.grant_key, row]));
    const model = new Map(expected.grants.map((grant) => [tallyKeyOf(grant.key), grant]));
    for (const [grantKey, grant] of model) {
      const found = tally.get(grantKey);
      if (found === undefined) failures.push(`${accountId} grant ${grantKey} (${grant.amount}) missing in Tally`);
      else if (Number(found.amount) !== grant.amount || (found.expires_at === null ? null : Number(found.expires_at)) !== grant.expiresAt) {
        failures.push(
          `${accountId} grant ${grantKey}: Tally ${found.amount} expiring ${iso(found.expires_at)}, model ${grant.amount} expiring ${iso(grant.expiresAt)}`,
        );
      }
    }
    for (const [grantKey, row] of tally)
      if (!model.has(grantKey) && !(result.voidable.has(grantKey) && Number(row.remaining) === 0))
        failures.push(
          `${accountId} grant ${grantKey} (${row.amount}, by ${row.event ?? '?'}) in Tally, not in the model${result.voidable.has(grantKey) ? `, which voids it: the yearly subscription ended at or before the month's start (gap 8), yet ${row.remaining} remain` : ''}`,
        );
    // Within one expiry the spend order falls back to creation order, which chaotic delivery may
    // change; what remains per expiry (live grants) is what must agree.
    const byExpiry = (entries: { expiresAt: number | null; remaining: number; live: boolean }[]) => {
      const sums = new Map<string, number>();
      for (const entry of entries)
        if (entry.live) sums.set(String(entry.expiresAt), (sums.get(String(entry.expiresAt)) ?? 0) + entry.remaining);
      return JSON.stringify([...sums].filter(([, sum]) => sum !== 0).sort());
    };
    const tallyLive = byExpiry(
      rows.map((row) => ({
        expiresAt: row.expires_at === null ? null : Number(row.expires_at),
        remaining: Number(row.remaining),
        live: row.expires_at === null || Number(row.expires_at) > now,
      })),
    );
    const modelLive = byExpiry(
      expected.grants.map((grant) => ({ expiresAt: grant.expiresAt, remaining: grant.remaining, live: !grant.expired })),
    );
    if (tallyLive !== modelLive) failures.push(`${accountId} live credits by expiry: Tally ${tallyLive}, model ${modelLive}`);
  }
}

/** A seed's database goes when the seed is done: long runs would otherwise fill the disk. */
async function dropDatabase(url: string): Promise<void> {
  const server = process.env.TALLY_TEST_SERVER_URL;
  if (server === undefined) return;
  const admin = new pg.Client({ connectionString: server });
  await admin.connect();
  try {
    await admin.query(`drop database if exists ${pg.escapeIdentifier(new URL(url).pathname.slice(1))} with (force)`);
  } finally {
    await admin.end();
  }
}

/** Two decimal strings name different numbers ("0.50" and "0.5" do not). */
function decimalDiffers(a: string, b: string): boolean {
  const normal = (value: string) => {
    const [whole = '0', fraction = ''] = value.split('.');
    return `${BigInt(whole)}.${fraction.replace(/0+$/, '')}`;
  };
  return normal(a) !== normal(b);
}

export function iso(seconds: number | string | null | undefined): string {
  return seconds === null || seconds === undefined ? 'never' : new Date(Number(seconds) * 1000).toISOString();
}
