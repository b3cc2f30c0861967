import type { Catalog, Plan } from '../src/billing/catalog.js';
import type { Answer, Fact, PaidLine, Period } from './history.js';

/**
 * The reference model: SPEC's credit rule and ledger rules as a pure function of the Stripe
 * history and the app's calls (history.ts). No database, no clock of its own: time is the `at`
 * of each fact. It answers every account's expected balance and grants, and the answer each app
 * call should have had. Readings of SPEC where the contract leaves room are marked "Reading:".
 */
export interface ModelGrant {
  key: string;
  amount: number;
  remaining: number;
  expiresAt: number | null;
  expired: boolean;
}

export interface ModelAccount {
  available: number;
  held: number;
  debt: number;
  grants: ModelGrant[];
}

export interface ModelResult {
  accounts: Map<string, ModelAccount>;
  /** The expected answer of each app call, by its idempotency key (holds, usage) or `capture:`/`void:` + hold key. */
  answers: Map<string, Answer>;
}

interface Grant extends ModelGrant {
  sequence: number;
  payment: string | undefined;
  /** The subscription credit period it belongs to (`{subscription}:{start}`), for rollover. */
  period: string | undefined;
  /** The plan a subscription grant was billed for. */
  plan: Plan | undefined;
  expiredCredits: number;
}
interface Take {
  grant: Grant;
  credits: number;
}
interface Account {
  grants: Grant[];
  debt: number;
  held: number;
  trialed: boolean;
}
interface Hold {
  account: Account;
  amount: number;
  taken: Take[];
  expiresAt: number;
  pending: boolean;
}
interface Clawback {
  account: Account;
  payment: Payment;
  credits: number;
  taken: Take[];
}
interface Payment {
  id: string;
  account: Account;
  amountPaid: number;
  credits: number;
  clawed: number;
  /** A yearly invoice's year, whose months not yet granted a refund cancels first. */
  year: { subscription: string; period: Period; monthly: number } | undefined;
}
interface Subscription {
  id: string;
  account: Account;
  lines: PaidLine[];
  /** Credit periods granted so far, by start. */
  periods: Map<number, Period>;
  /** Yearly months still to grant (months 2 to 12 of each paid year). */
  schedule: (Period & { year: Period })[];
  /** Credits of yearly months (by month start) cancelled by refunds before they were granted. */
  cancelled: Map<number, number>;
  /** Yearly months (by start) never granted because the subscription had ended. */
  lost: Set<number>;
  endedAt: number | undefined;
  trialEnd: number | undefined;
}

/**
 * Adds months in UTC, clamped to the end of a shorter month, as Stripe counts periods from their
 * anchor. Written again here on purpose: the oracle shares no code with what it judges, so a wrong
 * calendar in src/billing/credit-rule.ts shows up as a disagreement instead of agreeing with itself.
 */
export function addMonths(unixSeconds: number, months: number): number {
  const date = new Date(unixSeconds * 1000);
  const target = new Date(
    Date.UTC(date.getUTCFullYear(), date.getUTCMonth() + months, 1, date.getUTCHours(), date.getUTCMinutes(), date.getUTCSeconds()),
  );
  const lastDay = new Date(Date.UTC(target.getUTCFullYear(), target.getUTCMonth() + 1, 0)).getUTCDate();
  target.setUTCDate(Math.min(date.getUTCDate(), lastDay));
  return Math.floor(target.getTime() / 1000);
}

/** The month slices of a yearly period; the last one ends with the year. */
export function monthsOf(year: Period): Period[] {
  const months: Period[] = [];
  for (let index = 0; index < 12 && addMonths(year.start, index) < year.end; index += 1) {
    months.push({ start: addMonths(year.start, index), end: Math.min(addMonths(year.start, index + 1), year.end) });
  }
  return months;
}

/** Whole credits of `credits` for `overlap` of `length` seconds: down for grants, up for clawbacks. */
function share(credits: number, overlap: number, length: number, up: boolean): number {
  const numerator = BigInt(credits) * BigInt(overlap);
  const quotient = numerator / BigInt(length);
  return Number(up && quotient * BigInt(length) !== numerator ? quotient + 1n : quotient);
}

const overlapOf = (a: Period, b: Period) => Math.max(0, Math.min(a.end, b.end) - Math.max(a.start, b.start));

export function runModel(catalog: Catalog, facts: Fact[]): ModelResult {
  const accounts = new Map<string, Account>();
  const subscriptions = new Map<string, Subscription>();
  const payments = new Map<string, Payment>();
  const holds = new Map<string, Hold>();
  const clawbacks = new Map<string, Clawback>();
  const answers = new Map<string, Answer>();
  let now = 0;
  let sequence = 0;

  const planOf = (price: string): { plan: Plan; interval: 'month' | 'year' } | undefined => {
    for (const plan of catalog.plans) {
      if (plan.prices.month === price) return { plan, interval: 'month' };
      if (plan.prices.year === price) return { plan, interval: 'year' };
    }
    return undefined;
  };
  const account = (id: string): Account => {
    let found = accounts.get(id);
    if (found === undefined) accounts.set(id, (found = { grants: [], debt: 0, held: 0, trialed: false }));
    return found;
  };
  const subscription = (id: string, owner: Account): Subscription => {
    let found = subscriptions.get(id);
    if (found === undefined) {
      found = {
        id,
        account: owner,
        lines: [],
        periods: new Map(),
        schedule: [],
        cancelled: new Map(),
        lost: new Set(),
        endedAt: undefined,
        trialEnd: undefined,
      };
      subscriptions.set(id, found);
    }
    return found;
  };
  const live = (grant: Grant) => !grant.expired && grant.remaining > 0;
  const available = (owner: Account) => owner.grants.reduce((sum, grant) => sum + (grant.expired ? 0 : grant.remaining), 0);
  /** Spend order: priority (all Stripe grants have 0), earliest expiry (never last), oldest. */
  const spendOrder = (a: Grant, b: Grant) => (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) || a.sequence - b.sequence;

  const expire = (grant: Grant) => {
    if (grant.expired) return;
    grant.expired = true;
    grant.expiredCredits += grant.remaining;
    grant.remaining = 0;
  };
  /** Gives credits back to a grant (a release or a restore): debt first; an expired grant loses them. */
  const giveBack = (owner: Account, grant: Grant, credits: number) => {
    if (grant.expired) return;
    const repaid = Math.min(owner.debt, credits);
    owner.debt -= repaid;
    grant.remaining += credits - repaid;
  };
  const release = (hold: Hold, captured: number) => {
    hold.pending = false;
    hold.account.held -= hold.amount;
    let left = hold.amount - captured;
    for (const take of [...hold.taken].reverse()) {
      const give = Math.min(take.credits, left);
      left -= give;
      giveBack(hold.account, take.grant, give);
    }
  };
  /** Brings every account to `at`: holds past their expiry release first, then grants expire. */
  const settle = (at: number) => {
    now = at;
    for (const hold of holds.values()) if (hold.pending && hold.expiresAt <= at) release(hold, 0);
    for (const owner of accounts.values())
      for (const grant of owner.grants) if (grant.expiresAt !== null && grant.expiresAt <= at) expire(grant);
  };
  const take = (grants: Grant[], credits: number): Take[] => {
    const taken: Take[] = [];
    for (const grant of grants.filter(live).sort(spendOrder)) {
      if (credits === 0) break;
      const part = Math.min(grant.remaining, credits);
      grant.remaining -= part;
      credits -= part;
      taken.push({ grant, credits: part });
    }
    return taken;
  };
  const spend = (owner: Account, amount: number): Take[] | undefined =>
    available(owner) < amount ? undefined : take(owner.grants, amount);

  const grant = (
    owner: Account,
    key: string,
    amount: number,
    expiresAt: number | null,
    extra: { payment?: Payment; period?: string; plan?: Plan } = {},
  ): Grant | undefined => {
    if (amount <= 0 || owner.grants.some((existing) => existing.key === key)) return undefined;
    const repaid = Math.min(owner.debt, amount);
    owner.debt -= repaid;
    const created: Grant = {
      key,
      amount,
      remaining: amount - repaid,
      expiresAt,
      expired: false,
      sequence: (sequence += 1),
      payment: extra.payment?.id,
      period: extra.period,
      plan: extra.plan,
      expiredCredits: 0,
    };
    owner.grants.push(created);
    if (expiresAt !== null && expiresAt <= now) expire(created);
    return created;
  };
  /** Takes credits back: from `own` first, then the other grants in spend order; the rest is debt. */
  const clawBack = (owner: Account, credits: number, own: Grant[]): Take[] => {
    const taken = take(own, credits);
    const fromOwn = taken.reduce((sum, part) => sum + part.credits, 0);
    const more = take(owner.grants, Math.min(credits - fromOwn, available(owner)));
    const debt = credits - fromOwn - more.reduce((sum, part) => sum + part.credits, 0);
    owner.debt += debt;
    return [...taken, ...more];
  };
  const ownGrants = (payment: Payment) => payment.account.grants.filter((candidate) => candidate.payment === payment.id);
  /**
   * Reading (as main's tally_restore): a restore first repays what the account owes, then gives
   * the rest back to the grants the clawback took from, last taken first (a grant that has
   * expired meanwhile loses them); what is still left (debt the clawback made that later
   * credits repaid) comes back as a never-expiring grant `{key}:debt-repaid`.
   */
  const restore = (clawback: Clawback, key: string) => {
    const owner = clawback.account;
    const repaid = Math.min(owner.debt, clawback.credits);
    owner.debt -= repaid;
    let left = clawback.credits - repaid;
    for (const part of [...clawback.taken].reverse()) {
      const give = Math.min(part.credits, left);
      left -= give;
      if (!part.grant.expired) part.grant.remaining += give;
    }
    grant(owner, `${key}:debt-repaid`, left, null);
    clawback.payment.clawed -= clawback.credits;
  };

  /**
   * A subscription credit period's grant, with rollover: when the period before it (same
   * subscription, ending exactly where this one starts) ended on a plan with rollover, its unused
   * credits up to that plan's max_credits move into a rollover grant; the rest expire now.
   * Reading: the plan is the one the ending period ended on (its newest grant that names a plan:
   * a mid-period upgrade names the new plan, a change with `none` does not). "Unused" counts
   * what the old period's grants expired with if they ended before this grant came (a renewal
   * paid late).
   */
  const grantPeriod = (sub: Subscription, period: Period, plan: Plan, credits: number, payment: Payment | undefined) => {
    const key = `${sub.id}:${period.start}`;
    const made = grant(sub.account, `period:${key}`, credits, period.end, { payment, period: key, plan });
    if (made === undefined) return;
    const previous = [...sub.periods.values()].find((candidate) => candidate.end === period.start);
    sub.periods.set(period.start, period);
    if (previous === undefined) return;
    const ending = sub.account.grants.filter((candidate) => candidate.period === `${sub.id}:${previous.start}`);
    // The smallest rollover of the plans billed in the ending period (none if one has none), so
    // that a short upgrade just before a renewal cannot raise the cap.
    const billed = ending.flatMap((old) => (old.plan === undefined ? [] : [old.plan]));
    if (billed.length === 0 || billed.some((plan) => plan.rollover === undefined)) return;
    const cap = Math.min(...billed.map((plan) => plan.rollover?.max_credits ?? 0));
    for (const old of ending) expire(old);
    const unused = ending.reduce((sum, old) => sum + old.expiredCredits, 0);
    grant(sub.account, `rollover:${key}`, Math.min(unused, cap), period.end, { period: key });
  };

  /**
   * The net credits of a future yearly month: every paid line of its year covering it, less
   * refund cancellations. A line counts only in the months of its own billing period (after an
   * interval change with `none`, the old year's months and the new year's are both paid for).
   */
  const monthCredits = (sub: Subscription, month: Period & { year: Period }): { credits: number; plan: Plan | undefined } => {
    let credits = 0;
    let plan: Plan | undefined;
    for (const line of sub.lines) {
      const match = planOf(line.price);
      if (match?.interval !== 'year' || line.billingPeriod.start !== month.year.start || line.start > month.start || line.end < month.end)
        continue;
      credits += (line.amount < 0 ? -1 : 1) * match.plan.credits_per_month * line.quantity;
      if (line.amount >= 0) plan = match.plan;
    }
    return { credits: credits - (sub.cancelled.get(month.start) ?? 0), plan };
  };
  /**
   * Reading (as main): a refund cancels, from the last month of the year backwards, what the
   * refunded payment itself still had to grant in months not yet granted (its own line's
   * credits × quantity a month), not what later changes added to those months.
   */
  const grantDueMonths = (at: number) => {
    const due = [...subscriptions.values()].flatMap((sub) =>
      sub.schedule.filter((month) => month.start <= at).map((month) => ({ sub, month })),
    );
    for (const { sub, month } of due.sort((a, b) => a.month.start - b.month.start)) {
      sub.schedule = sub.schedule.filter((candidate) => candidate !== month);
      if (sub.endedAt !== undefined && sub.endedAt <= month.start) {
        sub.lost.add(month.start);
        continue;
      }
      const { credits, plan } = monthCredits(sub, month);
      if (plan !== undefined) grantPeriod(sub, month, plan, credits, undefined);
    }
  };

  const invoicePaid = (fact: Extract<Fact, { kind: 'invoice_paid' }>) => {
    const owner = account(fact.account);
    const sub = subscription(fact.subscription, owner);
    const payment: Payment = {
      id: fact.paymentIntent ?? fact.invoice,
      account: owner,
      amountPaid: fact.amountPaid,
      credits: 0,
      clawed: 0,
      year: undefined,
    };
    payments.set(payment.id, payment);
    const lines = fact.lines.filter((line) => planOf(line.price) !== undefined);
    // Reading: positive lines first, then negative ones, so that a clawback on an invoice sees the
    // grants the same invoice made and the result does not depend on the order Stripe lists lines.
    for (const line of [...lines].sort((a, b) => Number(a.amount < 0) - Number(b.amount < 0))) {
      const { plan, interval } = planOf(line.price)!;
      const monthly = plan.credits_per_month * line.quantity;
      sub.lines.push(line);
      if (!line.proration) {
        // The $0 line of a trial grants nothing: the trial rule grants that period.
        if (line.amount === 0 && sub.trialEnd !== undefined && line.start < sub.trialEnd) continue;
        if (interval === 'month') {
          grantPeriod(sub, line, plan, monthly, payment);
          payment.credits += monthly;
          continue;
        }
        const [first, ...later] = monthsOf(line);
        grantPeriod(sub, first!, plan, monthly, payment);
        sub.schedule.push(...later.map((month) => ({ ...month, year: { start: line.start, end: line.end } })));
        payment.credits += 12 * monthly;
        payment.year = { subscription: sub.id, period: { start: line.start, end: line.end }, monthly };
        continue;
      }
      // A proration line moves credits in each credit period it overlaps that has begun; later
      // yearly months take it in their net when they are granted.
      const creditPeriods =
        interval === 'month' ? [line.billingPeriod] : monthsOf(line.billingPeriod).filter((month) => month.start <= fact.at);
      for (const creditPeriod of creditPeriods) {
        const overlap = overlapOf(line, creditPeriod);
        if (overlap === 0) continue;
        const length = creditPeriod.end - creditPeriod.start;
        if (line.amount < 0) {
          const credits = share(monthly, overlap, length, true);
          if (credits > 0 && !clawbacks.has(`proration:${line.id}`)) {
            // Reading: a proration clawback takes from its own credit period's grants first (SPEC:
            // "exceeds what is left of the period's credits leaves debt, as a refund does"), then
            // from the others in spend order, as a refund does; beyond that it is debt.
            const period = owner.grants.filter((candidate) => candidate.period === `${sub.id}:${creditPeriod.start}`);
            clawbacks.set(`proration:${line.id}`, { account: owner, payment, credits, taken: clawBack(owner, credits, period) });
          }
          continue;
        }
        // Paid after its period ended: into the period current at payment, expiring with it.
        const into = creditPeriod.end > fact.at ? creditPeriod : fact.currentPeriod;
        grant(owner, `proration:${line.id}`, share(monthly, overlap, length, false), into.end, {
          payment,
          period: `${sub.id}:${into.start}`,
          plan,
        });
      }
    }
  };

  /**
   * Reading (as main): a yearly refund first cancels what the payment bought and was never
   * granted, from the last month of its year backwards: a month still to come up to what it
   * still nets (a later plan change is not clawed twice), a month the ended subscription never
   * granted in full. Answers the credits cancelled. (SPEC is silent on a refund after a change
   * already credited the payment's months; the refund then claws from granted credits.)
   */
  const cancelMonths = (year: NonNullable<Payment['year']>, credits: number): number => {
    const sub = subscriptions.get(year.subscription)!;
    let cancelled = 0;
    for (const month of monthsOf(year.period).slice(1).reverse()) {
      if (credits - cancelled <= 0) break;
      const already = sub.cancelled.get(month.start) ?? 0;
      const pending = sub.schedule.find((candidate) => candidate.start === month.start && candidate.year.start === year.period.start);
      // A month that came and netted to nothing (a switch away from the yearly price credited it)
      // is not cancelled again: only months still to come and months the end took away.
      let cap = 0;
      if (pending !== undefined) cap = Math.min(year.monthly - already, Math.max(0, monthCredits(sub, pending).credits));
      else if (sub.lost.has(month.start)) cap = year.monthly - already;
      const take = Math.min(credits - cancelled, Math.max(0, cap));
      if (take <= 0) continue;
      sub.cancelled.set(month.start, already + take);
      cancelled += take;
    }
    return cancelled;
  };

  const refund = (fact: Extract<Fact, { kind: 'refund' }>) => {
    const payment = payments.get(fact.paymentIntent);
    if (payment === undefined || payment.amountPaid <= 0 || clawbacks.has(`refund:${fact.refund}`)) return;
    const wanted = share(payment.credits, Math.min(fact.amount, payment.amountPaid), payment.amountPaid, false);
    let credits = Math.min(wanted, payment.credits - payment.clawed);
    payment.clawed += credits;
    if (payment.year !== undefined) {
      credits -= cancelMonths(payment.year, credits);
    }
    clawbacks.set(`refund:${fact.refund}`, {
      account: payment.account,
      payment,
      credits,
      taken: clawBack(payment.account, credits, ownGrants(payment)),
    });
  };

  const dispute = (fact: Extract<Fact, { kind: 'dispute' }>) => {
    const payment = payments.get(fact.paymentIntent);
    if (payment === undefined || clawbacks.has(`dispute:${fact.dispute}`)) return;
    const credits = payment.credits - payment.clawed;
    payment.clawed += credits;
    clawbacks.set(`dispute:${fact.dispute}`, {
      account: payment.account,
      payment,
      credits,
      taken: clawBack(payment.account, credits, ownGrants(payment)),
    });
  };

  const reverse = (key: string, restoreKey: string) => {
    const clawback = clawbacks.get(key);
    if (clawback === undefined || clawbacks.has(restoreKey)) return;
    clawbacks.set(restoreKey, clawback);
    restore(clawback, restoreKey);
  };

  const usage = (accountId: string, amount: number, key: string) => {
    const owner = account(accountId);
    const taken = spend(owner, amount);
    answers.set(key, taken === undefined ? { status: 402, available: available(owner) } : { status: 200, available: available(owner) });
  };

  for (const fact of facts) {
    settle(Math.max(now, fact.at));
    switch (fact.kind) {
      case 'clock':
        grantDueMonths(fact.at);
        break;
      case 'invoice_paid':
        invoicePaid(fact);
        break;
      case 'trial_started': {
        const owner = account(fact.account);
        const trial = planOf(fact.price)?.plan.trial;
        subscription(fact.subscription, owner).trialEnd = fact.trialEnd;
        if (trial !== undefined && !owner.trialed) {
          owner.trialed = true;
          grant(owner, `trial:${fact.account}`, trial.credits, fact.trialEnd);
        }
        break;
      }
      case 'subscription_ended':
        if (subscriptions.has(fact.subscription)) subscriptions.get(fact.subscription)!.endedAt ??= fact.at;
        break;
      case 'pack_paid': {
        const owner = account(fact.account);
        const credits = fact.items.reduce(
          (sum, item) => sum + (catalog.credit_packs.find((pack) => pack.price === item.price)?.credits ?? 0) * item.quantity,
          0,
        );
        const payment: Payment = {
          id: fact.paymentIntent,
          account: owner,
          amountPaid: fact.amountPaid,
          credits,
          clawed: 0,
          year: undefined,
        };
        payments.set(payment.id, payment);
        grant(owner, `purchase:${fact.paymentIntent}`, credits, null, { payment });
        break;
      }
      case 'refund':
        refund(fact);
        break;
      case 'refund_reversed':
        reverse(`refund:${fact.refund}`, `refund-reversed:${fact.refund}`);
        break;
      case 'dispute':
        dispute(fact);
        break;
      case 'dispute_won':
        reverse(`dispute:${fact.dispute}`, `dispute-won:${fact.dispute}`);
        break;
      case 'usage':
        usage(fact.account, fact.amount, fact.key);
        break;
      case 'batch':
        for (const event of fact.events) usage(event.account, event.amount, event.key);
        break;
      case 'hold': {
        const owner = account(fact.account);
        const taken = spend(owner, fact.amount);
        if (taken !== undefined) {
          holds.set(fact.key, { account: owner, amount: fact.amount, taken, expiresAt: fact.at + fact.expiresInSeconds, pending: true });
          owner.held += fact.amount;
        }
        answers.set(fact.key, { status: taken === undefined ? 402 : 201, available: available(owner) });
        break;
      }
      case 'capture':
      case 'void': {
        const hold = holds.get(fact.hold);
        const pending = hold?.pending === true;
        if (hold !== undefined && pending) release(hold, fact.kind === 'capture' ? fact.amount : 0);
        answers.set(
          `${fact.kind}:${fact.hold}`,
          pending ? { status: 200, available: available(hold!.account) } : { status: hold === undefined ? 404 : 409 },
        );
        break;
      }
    }
  }

  const result = new Map<string, ModelAccount>();
  for (const [id, owner] of accounts) {
    if (owner.debt > 0 && available(owner) > 0) throw new Error(`model broken: account ${id} has debt and available credits`);
    result.set(id, {
      available: available(owner),
      held: owner.held,
      debt: owner.debt,
      grants: owner.grants.map(({ key, amount, remaining, expiresAt, expired }) => ({ key, amount, remaining, expiresAt, expired })),
    });
  }
  return { accounts: result, answers };
}
