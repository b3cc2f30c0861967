import type { Catalog, Plan } from '../src/billing/catalog.js';
import type { Answer, Fact, PaidLine, Period, PricedSpend, Rates, StripeSubscription } from './history.js';

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
  /** The sub-credit carry its priced spends left, a decimal string in [0, 1). */
  carry: string;
}

/** An event the model expects in GET /v1/events exactly once: its type, what names it, and when. */
export interface ExpectedEvent {
  type: 'grant.created' | 'trial.granted' | 'topup.succeeded' | 'topup.failed';
  /** The grant key (grant.created, trial.granted) or the PaymentIntent (top-ups). */
  subject: string;
  at: number;
  /** topup.failed: whether this failure turned auto top-up off. */
  disabled?: boolean;
}

export interface ModelResult {
  accounts: Map<string, ModelAccount>;
  /** The expected answer of each app call, by its idempotency key (holds, usage) or `capture:`/`void:` + hold key. */
  answers: Map<string, Answer>;
  /** Rules the history itself broke (a second PaymentIntent for one top-up, a charge nobody asked for). */
  violations: string[];
  /** Events each account should have in the event log, in the order they happened. */
  events: Map<string, ExpectedEvent[]>;
  /**
   * Grant keys Tally may hold although the model has none: yearly months that an end at or before
   * their start voided after Tally had granted them (their credits must be gone again).
   */
  voidable: Set<string>;
  /** Operators' grants and adjustments: the model's key of each, to the request key Tally keys it by. */
  requestKeys: Map<string, string>;
}

interface Grant extends ModelGrant {
  sequence: number;
  priority: number;
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
interface TopUpState {
  enabled: boolean;
  threshold: number;
  credits: number;
  maxPerMonth: number;
  failuresInRow: number;
  /** Top-ups fired so far (the `n` of `topup:{account}:{n}`). */
  fired: number;
  /** The top-up in flight: fired and not resolved (its key). */
  inFlight: string | undefined;
  /** Top-ups fired per UTC month that did not fail. */
  perMonth: Map<number, number>;
}
interface Account {
  id: string;
  grants: Grant[];
  debt: number;
  held: number;
  trialed: boolean;
  flagged: boolean;
  limits: { perDay: number | null; perMonth: number | null } | undefined;
  spentByDay: Map<number, number>;
  spentByMonth: Map<number, number>;
  topUp: TopUpState | undefined;
  /** The fractional credits priced spends left over, in units of 10^-12 (SPEC: in [0, 1)). */
  carry: bigint;
}
interface Hold {
  account: Account;
  amount: number;
  /** A priced hold: its meter and the card version that priced it, which prices its capture too. */
  priced: { meter: string; version: CardVersion } | undefined;
  taken: Take[];
  at: number;
  expiresAt: number;
  pending: boolean;
}
interface CardVersion {
  version: number;
  effectiveAt: number;
  rates: Rates;
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
  /** What the payment's invoice or session totalled before the customer's Stripe balance paid part of it. */
  total: number;
  credits: number;
  clawed: number;
  /** A yearly invoice's year, whose months not yet granted a refund cancels first. */
  year: { subscription: string; item: string; period: Period; monthly: number } | undefined;
}
interface Subscription {
  id: string;
  account: Account;
  lines: PaidLine[];
  /** Credit periods granted so far, by start. */
  periods: Map<number, Period>;
  /** Yearly months still to grant (months 2 to 12 of each paid year), with the item and payment that bought them. */
  schedule: (Period & { year: Period; item: string; payment: Payment })[];
  /** Credits of yearly months (by month start) cancelled by refunds before they were granted. */
  cancelled: Map<number, number>;
  /** Yearly months (by start) never granted because the subscription had ended. */
  lost: Set<number>;
  endedAt: number | undefined;
  trialEnd: number | undefined;
}
interface TopUp {
  account: Account;
  key: string;
  paymentIntent: string | undefined;
  monthOf: number;
  resolved: boolean;
}

/**
 * The calendar, written from its definition and sharing nothing with Tally's: days since the
 * epoch to a civil date and back (proleptic Gregorian, H. Hinnant's day counting), and months
 * added as Stripe counts periods from an anchor: the same day of the month and time of day, or
 * the last day of a shorter month (Jan 31 + 1 month = Feb 28 or 29).
 */
const secondsPerDay = 86400;
function civilOf(days: number): { year: number; month: number; day: number } {
  const shifted = days + 719468;
  const era = Math.floor(shifted / 146097);
  const dayOfEra = shifted - era * 146097;
  const yearOfEra = Math.floor(
    (dayOfEra - Math.floor(dayOfEra / 1460) + Math.floor(dayOfEra / 36524) - Math.floor(dayOfEra / 146096)) / 365,
  );
  const dayOfYear = dayOfEra - (365 * yearOfEra + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100));
  const monthFromMarch = Math.floor((5 * dayOfYear + 2) / 153);
  const day = dayOfYear - Math.floor((153 * monthFromMarch + 2) / 5) + 1;
  const month = monthFromMarch < 10 ? monthFromMarch + 3 : monthFromMarch - 9;
  return { year: yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day };
}
function daysOfCivil(year: number, month: number, day: number): number {
  const marchYear = month <= 2 ? year - 1 : year;
  const era = Math.floor(marchYear / 400);
  const yearOfEra = marchYear - era * 400;
  const dayOfYear = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  return era * 146097 + yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear - 719468;
}
const leap = (year: number) => (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
const monthLength = (year: number, month: number) => (month === 2 ? (leap(year) ? 29 : 28) : [4, 6, 9, 11].includes(month) ? 30 : 31);

export function addMonths(unixSeconds: number, months: number): number {
  const days = Math.floor(unixSeconds / secondsPerDay);
  const timeOfDay = unixSeconds - days * secondsPerDay;
  const { year, month, day } = civilOf(days);
  const count = year * 12 + (month - 1) + months;
  const targetYear = Math.floor(count / 12);
  const targetMonth = count - targetYear * 12 + 1;
  return daysOfCivil(targetYear, targetMonth, Math.min(day, monthLength(targetYear, targetMonth))) * secondsPerDay + timeOfDay;
}

/**
 * Exact decimals for priced usage: rates have at most 12 decimal places and quantities are
 * integers, so every cost is an integer number of 10^-12 credits, kept in a BigInt (no floats).
 */
const unit = 10n ** 12n;
export function decimalUnits(text: string): bigint {
  const [whole = '0', fraction = ''] = text.split('.');
  if (fraction.length > 12) throw new Error(`model: ${text} has more than 12 decimal places`);
  return BigInt(whole) * unit + BigInt(fraction.padEnd(12, '0'));
}
export function decimalText(units: bigint): string {
  const fraction = (units % unit).toString().padStart(12, '0').replace(/0+$/, '');
  return fraction === '' ? `${units / unit}` : `${units / unit}.${fraction}`;
}

/** The UTC day and the UTC month an instant falls in (spend limits, auto top-up's monthly count). */
export const utcDayOf = (unixSeconds: number) => Math.floor(unixSeconds / secondsPerDay);
export function utcMonthOf(unixSeconds: number): number {
  const { year, month } = civilOf(utcDayOf(unixSeconds));
  return year * 12 + month - 1;
}

/** The UTC day, ISO week (Monday to Monday) or calendar month an instant falls in. */
export function cadencePeriod(every: 'day' | 'week' | 'month', at: number): Period {
  const days = utcDayOf(at);
  if (every === 'day') return { start: days * secondsPerDay, end: (days + 1) * secondsPerDay };
  // 1970-01-01, day 0, was a Thursday: (days + 3) mod 7 counts days since Monday.
  if (every === 'week') {
    const monday = days - ((((days + 3) % 7) + 7) % 7);
    return { start: monday * secondsPerDay, end: (monday + 7) * secondsPerDay };
  }
  const { year, month } = civilOf(days);
  const start = daysOfCivil(year, month, 1) * secondsPerDay;
  return { start, end: addMonths(start, 1) };
}

/** The month slices of a yearly period, counted from its start; the last one ends with the year. */
export function monthsOf(year: Period): Period[] {
  const months: Period[] = [];
  for (let index = 0; index < 12; index += 1) {
    const start = addMonths(year.start, index);
    if (start >= year.end) break;
    months.push({ start, end: Math.min(addMonths(year.start, index + 1), year.end) });
  }
  return months;
}

/** Whole credits of `credits` for `overlap` of `length` seconds: floor for grants, ceiling for clawbacks. */
function share(credits: number, overlap: number, length: number, up: boolean): number {
  const numerator = BigInt(credits) * BigInt(overlap);
  const denominator = BigInt(length);
  return Number(up ? (numerator + denominator - 1n) / denominator : numerator / denominator);
}

export function runModel(catalog: Catalog, facts: Fact[]): ModelResult {
  const accounts = new Map<string, Account>();
  const subscriptions = new Map<string, Subscription>();
  const payments = new Map<string, Payment>();
  const holds = new Map<string, Hold>();
  const clawbacks = new Map<string, Clawback>();
  const answers = new Map<string, Answer>();
  const violations: string[] = [];
  const events = new Map<string, ExpectedEvent[]>();
  const voidable = new Set<string>();
  const requestKeys = new Map<string, string>();
  const topUps = new Map<string, TopUp>();
  const topUpOfPaymentIntent = new Map<string, TopUp>();
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
    if (found === undefined)
      accounts.set(
        id,
        (found = {
          id,
          grants: [],
          debt: 0,
          held: 0,
          trialed: false,
          flagged: false,
          limits: undefined,
          spentByDay: new Map(),
          spentByMonth: new Map(),
          topUp: undefined,
          carry: 0n,
        }),
      );
    return found;
  };
  const expect = (owner: Account, event: ExpectedEvent) => {
    const list = events.get(owner.id) ?? [];
    list.push(event);
    events.set(owner.id, list);
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
  /** SPEC's spend order: priority (lower first), earliest expiry (never-expiring last), oldest. */
  const spendOrder = (a: Grant, b: Grant) =>
    a.priority - b.priority || (a.expiresAt ?? Infinity) - (b.expiresAt ?? Infinity) || a.sequence - b.sequence;

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
  /** Takes a spend out of the spend-limit windows it was counted in (a hold's released part). */
  const uncount = (owner: Account, at: number, credits: number) => {
    const day = utcDayOf(at);
    const month = utcMonthOf(at);
    owner.spentByDay.set(day, (owner.spentByDay.get(day) ?? 0) - credits);
    owner.spentByMonth.set(month, (owner.spentByMonth.get(month) ?? 0) - credits);
  };
  const release = (hold: Hold, captured: number) => {
    hold.pending = false;
    hold.account.held -= hold.amount;
    uncount(hold.account, hold.at, hold.amount - captured);
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

  const grant = (
    owner: Account,
    key: string,
    amount: number,
    expiresAt: number | null,
    extra: { payment?: Payment; period?: string; plan?: Plan; priority?: number } = {},
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
      priority: extra.priority ?? 0,
      payment: extra.payment?.id,
      period: extra.period,
      plan: extra.plan,
      expiredCredits: 0,
    };
    owner.grants.push(created);
    expect(owner, { type: 'grant.created', subject: key, at: now });
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
   * Reading: a restore first repays what the account owes, then gives the rest back to the
   * grants the clawback took from, last taken first (a grant that has expired meanwhile loses
   * them, SPEC: "credits whose grant has expired meanwhile expire at once"); what is still left
   * (debt the clawback made that later credits repaid) comes back as a never-expiring grant
   * `{key}:debt-repaid`.
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
   * A subscription item's credit period grant (SPEC's key `period:{subscription}:{item}:{start}`),
   * with rollover: when the period before it (same subscription, ending exactly where this one
   * starts) ended on plans that all have rollover, its unused credits up to the smallest
   * max_credits move into `rollover:{subscription}:{start}`; the rest expire now.
   */
  const grantPeriod = (sub: Subscription, item: string, period: Period, plan: Plan, credits: number, payment: Payment | undefined) => {
    const key = `${sub.id}:${period.start}`;
    const made = grant(sub.account, `period:${sub.id}:${item}:${period.start}`, credits, period.end, { payment, period: key, plan });
    if (made === undefined) return;
    const previous = [...sub.periods.values()].find((candidate) => candidate.end === period.start);
    if (sub.periods.has(period.start)) return;
    sub.periods.set(period.start, period);
    if (previous === undefined) return;
    const ending = sub.account.grants.filter((candidate) => candidate.period === `${sub.id}:${previous.start}`);
    const billed = ending.flatMap((old) => (old.plan === undefined ? [] : [old.plan]));
    if (billed.length === 0 || billed.some((plan) => plan.rollover === undefined)) return;
    const cap = Math.min(...billed.map((plan) => plan.rollover?.max_credits ?? 0));
    for (const old of ending) expire(old);
    const unused = ending.reduce((sum, old) => sum + old.expiredCredits, 0);
    grant(sub.account, `rollover:${key}`, Math.min(unused, cap), period.end, { period: key });
  };

  /**
   * The net credits of a future yearly month of one item: every paid line of the item's year
   * covering the month, less refund cancellations. A line counts only in the months of its own
   * billing period.
   */
  const monthCredits = (sub: Subscription, month: Period & { year: Period; item: string; payment: Payment }) => {
    // Reading: each payment's part of a month nets on its own and never below nothing: a refund
    // that cancelled the month and a later "unused time" line of the same purchase do not both
    // take it away, nor take what another payment (an upgrade's line) bought.
    const inMonth = (line: PaidLine) => {
      const match = planOf(line.price);
      return match?.interval === 'year' &&
        line.item === month.item &&
        line.billingPeriod.start === month.year.start &&
        line.start <= month.start &&
        line.end >= month.end
        ? match.plan
        : undefined;
    };
    const parts = new Map<Payment | undefined, number>();
    let plan: Plan | undefined;
    sub.lines.forEach((line, index) => {
      const linePlan = inMonth(line);
      if (linePlan === undefined) return;
      const credits = linePlan.credits_per_month * line.quantity;
      if (line.amount >= 0) {
        plan = linePlan;
        const payment = linePayments.get(line);
        parts.set(payment, (parts.get(payment) ?? 0) + credits);
        return;
      }
      const own = linePayments.get(line);
      const buyer = sub.lines
        .slice(0, index)
        .reverse()
        .find((paid) => paid.amount >= 0 && inMonth(paid) === linePlan && linePayments.get(paid) !== own);
      const payment = buyer === undefined ? undefined : linePayments.get(buyer);
      parts.set(payment, (parts.get(payment) ?? 0) - credits);
    });
    parts.set(month.payment, (parts.get(month.payment) ?? 0) - (sub.cancelled.get(month.start) ?? 0));
    let credits = 0;
    for (const part of parts.values()) credits += Math.max(0, part);
    return { credits, plan };
  };
  const grantDueMonths = (at: number) => {
    const due = [...subscriptions.values()].flatMap((sub) =>
      sub.schedule.filter((month) => month.start <= at).map((month) => ({ sub, month })),
    );
    for (const { sub, month } of due.sort((a, b) => a.month.start - b.month.start)) {
      sub.schedule = sub.schedule.filter((candidate) => candidate !== month);
      if (sub.endedAt !== undefined && sub.endedAt <= month.start) {
        sub.lost.add(month.start);
        // The cancellation may reach Tally after its scheduler granted the month (a late
        // webhook): Tally may then show that grant and its rollover, clawed back to nothing.
        voidable.add(`period:${sub.id}:${month.item}:${month.start}`);
        voidable.add(`rollover:${sub.id}:${month.start}`);
        continue;
      }
      const { credits, plan } = monthCredits(sub, month);
      if (plan !== undefined) grantPeriod(sub, month.item, month, plan, credits, month.payment);
    }
  };
  /**
   * SPEC: a yearly subscription that ends at or before a month's start never keeps that month,
   * whatever order the cancellation and the scheduler ran in. A month the model granted at the
   * same instant (its start is the end) or that the end reached late is taken away again: its
   * grant goes, and whatever had been spent from it is clawed from the other grants or is debt.
   * Tally may show the grant it made and clawed back: its key is voidable. Reading: a rollover
   * made with that month goes with it (no renewal took place).
   */
  const subscriptionEnded = (sub: Subscription, at: number) => {
    sub.endedAt ??= at;
    const owner = sub.account;
    for (const old of [...owner.grants]) {
      const voidsWithMonth = old.key.startsWith(`period:${sub.id}:`) || old.key.startsWith(`rollover:${sub.id}:`);
      if (!voidsWithMonth || old.period === undefined) continue;
      const start = Number(old.period.slice(sub.id.length + 1));
      const inYear = sub.lines.some(
        (line) => planOf(line.price)?.interval === 'year' && line.billingPeriod.start < start && start < line.billingPeriod.end,
      );
      if (!inYear || start < sub.endedAt) continue;
      owner.grants = owner.grants.filter((candidate) => candidate !== old);
      voidable.add(old.key);
      sub.lost.add(start);
      sub.periods.delete(start);
      const spent = old.amount - (old.expired ? old.expiredCredits : old.remaining);
      if (spent > 0) clawBack(owner, spent, []);
    }
  };

  /**
   * SPEC: all clawbacks against one payment's credits together never exceed what it granted,
   * proration clawbacks of the period it paid included. Reading: a negative line ("unused time on
   * {plan}") hands back the unused part of what bought the plan as it stood before the change, so
   * it counts against the newest payment, other than the line's own invoice, whose line of that
   * plan paid for time in the credit period (a period line, a year, a positive proration); older
   * payments' credits paid for time already used or already credited back by the change that
   * replaced them. It claws at most what that payment has left; a period no payment paid for has
   * nothing to bound it.
   */
  const paymentBehind = (
    owner: Account,
    sub: Subscription,
    line: PaidLine,
    creditPeriod: Period,
    plan: Plan,
    own: Payment,
  ): Payment | undefined => {
    // The newest line of the plan that paid for time in this credit period (a yearly month nets
    // several: after a seat change its grant carries the year's payment, but the seats it
    // credits back were bought by the change).
    const bought = [...sub.lines]
      .reverse()
      .find(
        (paid) =>
          paid !== line &&
          paid.amount >= 0 &&
          planOf(paid.price)?.plan === plan &&
          paid.item === line.item &&
          paid.start < creditPeriod.end &&
          paid.end > creditPeriod.start &&
          linePayments.get(paid) !== own,
      );
    if (bought !== undefined) return linePayments.get(bought);
    const period = `${sub.id}:${creditPeriod.start}`;
    const granted = owner.grants.filter(
      (candidate) => candidate.period === period && candidate.plan === plan && candidate.payment !== own.id,
    );
    const newest = granted.sort((a, b) => b.sequence - a.sequence)[0];
    return newest?.payment === undefined ? undefined : payments.get(newest.payment);
  };

  /**
   * Reading: a negative line of a yearly price also takes away months still to come (they net
   * less when the scheduler grants them). SPEC counts a proration clawback of the period a
   * payment paid against that payment, and a yearly payment's credits are its twelve months, so
   * what the line takes from each month still to come counts against the payment that bought the
   * year, up to what it has left: a later refund of it claws at most the rest.
   */
  const chargeLaterMonths = (sub: Subscription, line: PaidLine, plan: Plan, monthly: number, at: number, own: Payment) => {
    const covers = (paid: PaidLine, month: Period) => paid.start <= month.start && paid.end >= month.end;
    for (const month of sub.schedule) {
      if (month.start <= at || month.item !== line.item || month.year.start !== line.billingPeriod.start) continue;
      if (!covers(line, month)) continue;
      const after = monthCredits(sub, month).credits;
      const lines = sub.lines;
      sub.lines = lines.filter((paid) => paid !== line);
      const before = monthCredits(sub, month).credits;
      sub.lines = lines;
      const reduction = Math.min(monthly, Math.max(0, before - after));
      // As for the month current at payment: the newest other payment that bought this plan for
      // the month (an upgrade's positive line), else the payment that bought the year.
      const buyer = [...sub.lines]
        .reverse()
        .find(
          (paid) =>
            paid !== line &&
            paid.amount >= 0 &&
            planOf(paid.price)?.plan === plan &&
            paid.item === month.item &&
            paid.billingPeriod.start === month.year.start &&
            covers(paid, month) &&
            linePayments.get(paid) !== own,
        );
      const payment = (buyer === undefined ? undefined : linePayments.get(buyer)) ?? month.payment;
      payment.clawed += Math.min(reduction, Math.max(0, payment.credits - payment.clawed));
    }
  };
  /** The payment each plan line was paid by. */
  const linePayments = new Map<PaidLine, Payment>();

  /**
   * The credit period a subscription is in at `at`: its newest begun by then, if that one still
   * runs (one cut short by a cancellation does: its credits live until its end; one that an
   * interval change replaced does not, however far it reached).
   */
  const periodAt = (sub: Subscription, at: number): Period | undefined => {
    const begun = [...sub.periods.values()].filter((period) => period.start <= at).sort((a, b) => b.start - a.start)[0];
    return begun !== undefined && at < begun.end ? begun : undefined;
  };

  const invoicePaid = (fact: Extract<Fact, { kind: 'invoice_paid' }>) => {
    const owner = account(fact.account);
    const payment: Payment = {
      id: fact.paymentIntent ?? fact.invoice,
      account: owner,
      amountPaid: fact.amountPaid,
      total: fact.total,
      credits: 0,
      clawed: 0,
      year: undefined,
    };
    payments.set(payment.id, payment);
    const lines = fact.lines.filter((line) => planOf(line.price) !== undefined);
    // Reading: period lines first, then positive prorations, then negative ones (each in Stripe's
    // order), so that a clawback on an invoice sees the grants the same invoice made and the
    // result does not depend on the order Stripe lists lines. The grants one invoice makes are
    // equally old; this order is also their "oldest first" in the spend order, which decides
    // whose credits (which subscription's, so which rollover) a clawback takes first.
    const rank = (line: PaidLine) => (!line.proration ? 0 : line.amount >= 0 ? 1 : 2);
    for (const line of [...lines].sort((a, b) => rank(a) - rank(b))) {
      const { plan, interval } = planOf(line.price)!;
      // SPEC: a line is booked to its own subscription (the line's, not the invoice's).
      const sub = subscription(line.subscription, owner);
      const monthly = plan.credits_per_month * line.quantity;
      sub.lines.push(line);
      linePayments.set(line, payment);
      if (!line.proration) {
        // The $0 line of a trial grants nothing: the trial rule grants that period.
        if (line.amount === 0 && sub.trialEnd !== undefined && line.start < sub.trialEnd) continue;
        if (interval === 'month') {
          grantPeriod(sub, line.item, line, plan, monthly, payment);
          payment.credits += monthly;
          continue;
        }
        const [first, ...later] = monthsOf(line);
        const year = { start: line.start, end: line.end };
        grantPeriod(sub, line.item, first!, plan, monthly, payment);
        sub.schedule.push(...later.map((month) => ({ ...month, year, item: line.item, payment })));
        payment.credits += 12 * monthly;
        payment.year = { subscription: sub.id, item: line.item, period: year, monthly };
        continue;
      }
      // A proration line moves credits in each credit period it overlaps that has begun; later
      // yearly months take it in their net when they are granted.
      const creditPeriods =
        interval === 'month' ? [line.billingPeriod] : monthsOf(line.billingPeriod).filter((month) => month.start <= fact.at);
      for (const creditPeriod of creditPeriods) {
        const overlap = Math.max(0, Math.min(line.end, creditPeriod.end) - Math.max(line.start, creditPeriod.start));
        if (overlap === 0) continue;
        const length = creditPeriod.end - creditPeriod.start;
        const periodKey = `${sub.id}:${creditPeriod.start}`;
        if (line.amount < 0) {
          const behind = paymentBehind(owner, sub, line, creditPeriod, plan, payment);
          const wanted = share(monthly, overlap, length, true);
          const credits = behind === undefined ? wanted : Math.min(wanted, Math.max(0, behind.credits - behind.clawed));
          if (credits > 0 && !clawbacks.has(`proration:${line.id}`)) {
            // Reading: a proration clawback takes from its own credit period's grants first (SPEC:
            // "exceeds what is left of the period's credits leaves debt, as a refund does"), then
            // from the others in spend order, as a refund does; beyond that it is debt.
            const period = owner.grants.filter((candidate) => candidate.period === periodKey);
            if (behind !== undefined) behind.clawed += credits;
            clawbacks.set(`proration:${line.id}`, { account: owner, payment, credits, taken: clawBack(owner, credits, period) });
          }
          continue;
        }
        // Paid after its period ended: into the period current at payment, expiring with it.
        // Reading: the line's own subscription's; when that one has none (it ended, and its
        // pending line rode on another subscription's invoice), the paying invoice's.
        const into =
          creditPeriod.end > fact.at
            ? creditPeriod
            : sub.id === fact.subscription
              ? fact.currentPeriod
              : (periodAt(sub, fact.at) ?? fact.currentPeriod);
        const made = grant(owner, `proration:${line.id}`, share(monthly, overlap, length, false), into.end, {
          payment,
          period: `${sub.id}:${into.start}`,
          plan,
        });
        if (made !== undefined) payment.credits += made.amount;
      }
      if (interval === 'year' && line.amount < 0) chargeLaterMonths(sub, line, plan, monthly, fact.at, payment);
    }
  };

  /**
   * Reading: a yearly refund first cancels what the payment bought and was never granted, from
   * the last month of its year backwards: a month still to come up to what it still nets (a
   * later plan change is not clawed twice), a month the ended subscription never granted in
   * full. Answers the credits cancelled.
   */
  const cancelMonths = (year: NonNullable<Payment['year']>, credits: number): number => {
    const sub = subscriptions.get(year.subscription)!;
    let cancelled = 0;
    for (const month of monthsOf(year.period).slice(1).reverse()) {
      if (credits - cancelled <= 0) break;
      const already = sub.cancelled.get(month.start) ?? 0;
      const pending = sub.schedule.find((candidate) => candidate.start === month.start && candidate.year.start === year.period.start);
      let cap = 0;
      if (pending !== undefined) cap = Math.min(year.monthly - already, Math.max(0, monthCredits(sub, pending).credits));
      else if (sub.lost.has(month.start)) cap = year.monthly - already;
      const part = Math.min(credits - cancelled, Math.max(0, cap));
      if (part <= 0) continue;
      sub.cancelled.set(month.start, already + part);
      cancelled += part;
    }
    return cancelled;
  };

  /**
   * SPEC: `floor(credits × refunded / total)`, where total is the invoice's or session's total
   * before the customer's Stripe balance was applied, and never more than the payment has left
   * after every clawback against it (refunds and proration clawbacks of the period it paid).
   */
  const refund = (fact: Extract<Fact, { kind: 'refund' }>) => {
    const payment = payments.get(fact.paymentIntent);
    if (payment === undefined || payment.amountPaid <= 0 || payment.total <= 0 || clawbacks.has(`refund:${fact.refund}`)) return;
    const wanted = share(payment.credits, Math.min(fact.amount, payment.amountPaid), payment.total, false);
    let credits = Math.max(0, Math.min(wanted, payment.credits - payment.clawed));
    payment.clawed += credits;
    if (payment.year !== undefined) credits -= cancelMonths(payment.year, credits);
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
    // SPEC: a dispute flags the account; a flagged account is never charged off-session.
    payment.account.flagged = true;
    // Reading: "all credits of the disputed payment" are the credits the disputed money bought:
    // as for a refund of that amount, in proportion to the invoice's total before the customer's
    // Stripe balance paid part of it (all of them when the card paid it all).
    const bought = payment.total > 0 ? share(payment.credits, Math.min(fact.amount, payment.amountPaid), payment.total, false) : 0;
    const credits = Math.max(0, Math.min(bought, payment.credits - payment.clawed));
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

  /**
   * SPEC's spend limits: a usage or hold that would pass the day's or the month's limit is
   * `402 spend_limit_exceeded` (or `insufficient_credits` when the balance is short too), and
   * changes nothing. Every accepted spend counts in its UTC day and month, limits set or not.
   */
  const limitRefusal = (owner: Account, at: number, amount: number): string | undefined => {
    if (owner.limits === undefined) return undefined;
    const { perDay, perMonth } = owner.limits;
    if (perDay !== null && (owner.spentByDay.get(utcDayOf(at)) ?? 0) + amount > perDay) return 'spend_limit_exceeded';
    if (perMonth !== null && (owner.spentByMonth.get(utcMonthOf(at)) ?? 0) + amount > perMonth) return 'spend_limit_exceeded';
    return undefined;
  };
  const count = (owner: Account, at: number, amount: number) => uncount(owner, at, -amount);

  /**
   * SPEC's auto top-up: an accepted spend that leaves `available` below the threshold (so also one
   * made while already below it) fires a top-up when auto top-up is on, none is in flight, the
   * month's count is below max_per_month and the account is not flagged.
   */
  const maybeTopUp = (owner: Account, at: number, spendKey: string) => {
    const setting = owner.topUp;
    if (setting === undefined || !setting.enabled || owner.flagged || setting.inFlight !== undefined) return;
    if (available(owner) >= setting.threshold) return;
    const month = utcMonthOf(at);
    if ((setting.perMonth.get(month) ?? 0) >= setting.maxPerMonth) return;
    setting.fired += 1;
    setting.perMonth.set(month, (setting.perMonth.get(month) ?? 0) + 1);
    const key = `topup:${owner.id}:${setting.fired}`;
    setting.inFlight = key;
    topUps.set(key, { account: owner, key, paymentIntent: undefined, monthOf: month, resolved: false });
    answers.set(`fired:${key}`, { status: 0, code: spendKey });
  };

  /** Why a spend of `amount` credits would be refused now, or undefined: it would pass. */
  const refusalOf = (owner: Account, at: number, amount: number, more = 0): string | undefined => {
    // A priced spend that charges 0 credits is accepted at any balance (SPEC); reading: it passes
    // no limit either (spending nothing more cannot pass one).
    if (amount === 0) return undefined;
    const refusal = limitRefusal(owner, at, amount);
    // Reading: SPEC does not order the two refusals; when the balance is short too, either code is right.
    if (refusal !== undefined) return available(owner) + more < amount ? `${refusal}|insufficient_credits` : refusal;
    return available(owner) + more < amount ? 'insufficient_credits' : undefined;
  };
  const spendCall = (
    accountId: string,
    amount: number,
    key: string,
    at: number,
    hold?: { expiresInSeconds: number; priced?: Hold['priced'] },
  ): boolean => {
    const owner = account(accountId);
    const refusal = refusalOf(owner, at, amount);
    if (refusal !== undefined) {
      answers.set(key, { status: 402, code: refusal, available: available(owner) });
      return false;
    }
    const taken = take(owner.grants, amount);
    count(owner, at, amount);
    if (hold !== undefined) {
      holds.set(key, { account: owner, amount, taken, at, expiresAt: at + hold.expiresInSeconds, pending: true, priced: hold.priced });
      owner.held += amount;
    }
    answers.set(key, { status: hold === undefined ? 200 : 201, available: available(owner) });
    maybeTopUp(owner, at, key);
    return true;
  };

  /**
   * SPEC's priced usage. The account's plan is its subscription's while that is active, trialing
   * or past_due (several items: the one with the most credits per month), else the free plan;
   * its card the plan's `rate_card`, else `default_rate_card`. The version in effect at an
   * instant is the one whose `effective_at` is the latest not after it (reading: of two with
   * the same instant, the later published).
   */
  const cards = new Map<string, CardVersion[]>(
    catalog.rate_cards.map((card) => [card.id, [{ version: 1, effectiveAt: -Infinity, rates: card.rates }]]),
  );
  /**
   * SPEC's entitlements: the meters of the account's plan (several items: the union; a plan
   * without entitlements, or no plan at all, allows every meter), and its plan id.
   */
  const planFor = (subscription: PricedSpend['subscription']): { plan: Plan | undefined; meters: Set<string> | 'all'; plans: Plan[] } => {
    if (subscription !== null && ['active', 'trialing', 'past_due'].includes(subscription.status)) {
      let plan: Plan | undefined;
      let most = -1;
      let meters: Set<string> | 'all' = new Set();
      const plans: Plan[] = [];
      subscription.prices.forEach((price, index) => {
        const found = planOf(price)?.plan;
        if (found === undefined) return;
        if (!plans.includes(found)) plans.push(found);
        // Reading: an item's credits per month count its seats.
        const credits = found.credits_per_month * (subscription.quantities[index] ?? 1);
        if (credits > most) [plan, most] = [found, credits];
        const allowed = found.entitlements?.meters ?? 'all';
        meters = meters === 'all' || allowed === 'all' ? 'all' : new Set([...meters, ...allowed]);
      });
      if (plan !== undefined) return { plan, meters, plans };
    }
    const free = catalog.plans.find((candidate) => candidate.free === true);
    const allowed = free?.entitlements?.meters ?? 'all';
    return { plan: free, meters: allowed === 'all' ? 'all' : new Set(allowed), plans: free === undefined ? [] : [free] };
  };
  /**
   * SPEC's recurring grants: each of the plan's `recurring_grants` (reading: of every plan the
   * subscription's items are on, as the key names the plan) gives one grant per UTC day,
   * ISO week (from Monday) or calendar month, expiring at its end, by the account's first spend,
   * hold or balance read of the period. Reading: a spend refused for the balance or a limit
   * still gives it (the call's transaction commits its refusal, and the balance it was judged
   * by included the grant); one refused as not entitled writes nothing, so gives nothing.
   */
  const recurringDue = (owner: Account, at: number, subscription: StripeSubscription) =>
    planFor(subscription).plans.flatMap((plan) =>
      plan.recurring_grants
        .map((recurring) => {
          const period = cadencePeriod(recurring.every, at);
          // Reading: {period_start} is the UTC date the period starts (it always starts at midnight).
          const date = new Date(period.start * 1000).toISOString().slice(0, 10);
          return { key: `recurring:${owner.id}:${plan.id}:${recurring.every}:${date}`, credits: recurring.credits, period };
        })
        .filter((due) => !owner.grants.some((existing) => existing.key === due.key)),
    );
  const touch = (accountId: string, at: number, subscription: StripeSubscription | undefined) => {
    const owner = account(accountId);
    if (subscription === undefined) return;
    for (const due of recurringDue(owner, at, subscription)) grant(owner, due.key, due.credits, due.period.end);
  };
  const cardOf = (subscription: PricedSpend['subscription']): string => {
    const card = planFor(subscription).plan?.rate_card ?? catalog.default_rate_card;
    if (card === undefined) throw new Error('model: the catalog has no default_rate_card');
    return card;
  };
  /** `403 meter_not_entitled` when the meter is outside the account's plan, checked first. */
  const notEntitled = (priced: PricedSpend): string | undefined => {
    const { plan, meters } = planFor(priced.subscription);
    return meters === 'all' || meters.has(priced.meter) ? undefined : (plan?.id ?? 'none');
  };
  const versionAt = (card: string, at: number): CardVersion => {
    let found: CardVersion | undefined;
    for (const version of cards.get(card) ?? [])
      if (version.effectiveAt <= at && (found === undefined || version.effectiveAt >= found.effectiveAt)) found = version;
    if (found === undefined) throw new Error(`model: no version of rate card ${card} in effect`);
    return found;
  };
  const costOf = (rates: Rates, meter: string, quantities: Record<string, number>): bigint =>
    Object.entries(quantities).reduce((sum, [dimension, quantity]) => {
      const rate = rates[meter]?.[dimension];
      if (rate === undefined) throw new Error(`model: no rate for ${meter} ${dimension}`);
      return sum + BigInt(quantity) * decimalUnits(rate);
    }, 0n);
  /**
   * A priced usage charges floor(cost + carry) and keeps the rest as the carry; a refused one
   * changes neither. A priced hold reserves ceil(cost) at the version in effect, carry untouched.
   */
  const pricedCall = (accountId: string, key: string, at: number, priced: PricedSpend, hold?: { expiresInSeconds: number }) => {
    const owner = account(accountId);
    const planId = notEntitled(priced);
    if (planId !== undefined) {
      answers.set(key, { status: 403, code: 'meter_not_entitled', plan: planId });
      return;
    }
    touch(accountId, at, priced.subscription);
    const version = versionAt(cardOf(priced.subscription), at);
    const cost = costOf(version.rates, priced.meter, priced.quantities);
    const charge = hold === undefined ? (cost + owner.carry) / unit : (cost + unit - 1n) / unit;
    const accepted = spendCall(
      accountId,
      Number(charge),
      key,
      at,
      hold === undefined ? undefined : { ...hold, priced: { meter: priced.meter, version } },
    );
    if (!accepted) return;
    if (hold === undefined) owner.carry = cost + owner.carry - charge * unit;
    Object.assign(answers.get(key)!, { cost: decimalText(cost), version: version.version, amount: Number(charge) });
  };
  /** A priced hold's capture: by the hold's version, with the carry; beyond the hold it is refused. */
  const pricedCapture = (hold: Hold, key: string, quantities: Record<string, number>) => {
    const owner = hold.account;
    const priced = hold.priced!;
    const cost = costOf(priced.version.rates, priced.meter, quantities);
    const charge = (cost + owner.carry) / unit;
    if (charge > BigInt(hold.amount)) {
      answers.set(key, { status: 400, code: 'capture_exceeds_hold' });
      return;
    }
    release(hold, Number(charge));
    owner.carry = cost + owner.carry - charge * unit;
    answers.set(key, {
      status: 200,
      available: available(owner),
      cost: decimalText(cost),
      version: priced.version.version,
      amount: Number(charge),
    });
  };
  /** A quote: what the spend would charge now and the refusal it would get, writing nothing. */
  const quote = (fact: Extract<Fact, { kind: 'quote' }>) => {
    const owner = account(fact.account);
    let amount = fact.amount;
    let priced: Pick<Answer, 'cost' | 'version'> = { cost: `${fact.amount}` };
    if (fact.priced !== undefined) {
      const version = versionAt(cardOf(fact.priced.subscription), fact.at);
      const cost = costOf(version.rates, fact.priced.meter, fact.priced.quantities);
      amount = Number((cost + owner.carry) / unit);
      priced = { cost: decimalText(cost), version: version.version };
    }
    // The period's recurring grants count as if given (they repay debt first), writing nothing.
    const subscription = fact.subscription === undefined ? fact.priced?.subscription : fact.subscription;
    const due = subscription === undefined ? [] : recurringDue(owner, fact.at, subscription);
    const more = Math.max(0, due.reduce((sum, item) => sum + item.credits, 0) - owner.debt);
    const reason =
      fact.priced !== undefined && notEntitled(fact.priced) !== undefined ? 'meter_not_entitled' : refusalOf(owner, fact.at, amount, more);
    answers.set(fact.key, {
      status: 200,
      available: available(owner) + more,
      amount,
      ...priced,
      allowed: reason === undefined,
      ...(reason === undefined ? {} : { code: reason }),
    });
  };

  const paymentIntentCreated = (fact: Extract<Fact, { kind: 'payment_intent_created' }>) => {
    const topUp = topUps.get(fact.key);
    if (topUp === undefined) {
      violations.push(
        `Stripe PaymentIntent ${fact.paymentIntent} was created at ${new Date(fact.at * 1000).toISOString()} under ${fact.key}, a top-up no qualifying spend fired (SPEC: only a spend triggers; settings never charge)`,
      );
      return;
    }
    if (topUp.paymentIntent !== undefined) {
      violations.push(
        `a second PaymentIntent ${fact.paymentIntent} was created for top-up ${fact.key} at ${new Date(fact.at * 1000).toISOString()}, after ${topUp.paymentIntent} (SPEC: at most one PaymentIntent per top-up, never created again)`,
      );
      return;
    }
    topUp.paymentIntent = fact.paymentIntent;
    topUpOfPaymentIntent.set(fact.paymentIntent, topUp);
  };
  const paymentIntentResolved = (fact: Extract<Fact, { kind: 'payment_intent_resolved' }>) => {
    const topUp = topUpOfPaymentIntent.get(fact.paymentIntent);
    if (topUp === undefined || topUp.resolved) return;
    topUp.resolved = true;
    const owner = topUp.account;
    const setting = owner.topUp!;
    if (setting.inFlight === topUp.key) setting.inFlight = undefined;
    if (fact.outcome === 'succeeded') {
      setting.failuresInRow = 0;
      const payment: Payment = {
        id: fact.paymentIntent,
        account: owner,
        amountPaid: 0,
        total: 0,
        credits: setting.credits,
        clawed: 0,
        year: undefined,
      };
      payment.amountPaid = payment.total = topUpAmounts.get(fact.paymentIntent) ?? 0;
      payments.set(payment.id, payment);
      grant(owner, `purchase:${fact.paymentIntent}`, setting.credits, null, { payment });
      expect(owner, { type: 'topup.succeeded', subject: fact.paymentIntent, at: now });
      return;
    }
    setting.perMonth.set(topUp.monthOf, (setting.perMonth.get(topUp.monthOf) ?? 1) - 1);
    setting.failuresInRow += 1;
    const disabled = setting.failuresInRow >= 3;
    if (disabled) setting.enabled = false;
    expect(owner, { type: 'topup.failed', subject: fact.paymentIntent, at: now, disabled });
  };
  const topUpAmounts = new Map<string, number>();

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
          expect(owner, { type: 'trial.granted', subject: `trial:${fact.account}`, at: now });
        }
        break;
      }
      case 'subscription_ended': {
        const sub = subscriptions.get(fact.subscription);
        if (sub !== undefined) subscriptionEnded(sub, fact.at);
        break;
      }
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
          total: fact.amountPaid,
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
        if (fact.priced !== undefined) pricedCall(fact.account, fact.key, fact.at, fact.priced);
        else {
          touch(fact.account, fact.at, fact.subscription);
          spendCall(fact.account, fact.amount, fact.key, fact.at);
        }
        break;
      case 'batch':
        for (const event of fact.events)
          if (event.priced !== undefined) pricedCall(event.account, event.key, fact.at, event.priced);
          else {
            touch(event.account, fact.at, event.subscription);
            spendCall(event.account, event.amount, event.key, fact.at);
          }
        break;
      case 'hold':
        if (fact.priced !== undefined)
          pricedCall(fact.account, fact.key, fact.at, fact.priced, { expiresInSeconds: fact.expiresInSeconds });
        else {
          touch(fact.account, fact.at, fact.subscription);
          spendCall(fact.account, fact.amount, fact.key, fact.at, { expiresInSeconds: fact.expiresInSeconds });
        }
        break;
      case 'balance_read':
        touch(fact.account, fact.at, fact.subscription);
        break;
      case 'quote':
        quote(fact);
        break;
      case 'rate_card': {
        // Versions are numbered per card in order of publication; the catalog's is the first.
        const versions = cards.get(fact.card) ?? [];
        versions.push({ version: versions.length + 1, effectiveAt: fact.effectiveAt, rates: fact.rates });
        cards.set(fact.card, versions);
        answers.set(fact.key, { status: 200, version: versions.length });
        break;
      }
      case 'capture':
      case 'void': {
        const hold = holds.get(fact.hold);
        const pending = hold?.pending === true;
        if (hold !== undefined && pending && fact.kind === 'capture' && fact.quantities !== undefined && hold.priced !== undefined) {
          pricedCapture(hold, `capture:${fact.hold}`, fact.quantities);
          break;
        }
        if (hold !== undefined && pending) release(hold, fact.kind === 'capture' ? fact.amount : 0);
        answers.set(
          `${fact.kind}:${fact.hold}`,
          pending ? { status: 200, available: available(hold!.account) } : { status: hold === undefined ? 404 : 409 },
        );
        break;
      }
      case 'limits':
        account(fact.account).limits = { perDay: fact.perDay, perMonth: fact.perMonth };
        break;
      case 'admin_grant': {
        // SPEC: operators' grants are corrections, not spends: no limit counts or refuses them.
        const owner = account(fact.account);
        const key = `admin:${fact.key}`;
        requestKeys.set(key, fact.key);
        grant(owner, key, fact.amount, fact.expiresAt, { priority: fact.priority });
        answers.set(fact.key, { status: 201 });
        break;
      }
      case 'adjustment': {
        const owner = account(fact.account);
        const key = `admin:${fact.key}`;
        if (fact.amount > 0) {
          requestKeys.set(key, fact.key);
          grant(owner, key, fact.amount, null);
          answers.set(fact.key, { status: 201 });
        } else if (available(owner) < -fact.amount) {
          answers.set(fact.key, { status: 402, code: 'insufficient_credits' });
        } else {
          take(owner.grants, -fact.amount);
          answers.set(fact.key, { status: 201 });
        }
        break;
      }
      case 'auto_top_up': {
        const owner = account(fact.account);
        const credits = catalog.credit_packs.find((pack) => pack.id === fact.pack)?.credits ?? 0;
        const previous = owner.topUp;
        owner.topUp = {
          enabled: fact.enabled,
          threshold: fact.threshold,
          credits,
          maxPerMonth: fact.maxPerMonth,
          // Reading: turning it on again after it was off starts a new run of failures.
          failuresInRow: previous !== undefined && (previous.enabled || !fact.enabled) ? previous.failuresInRow : 0,
          fired: previous?.fired ?? 0,
          inFlight: previous?.inFlight,
          perMonth: previous?.perMonth ?? new Map(),
        };
        break;
      }
      case 'payment_intent_created':
        topUpAmounts.set(fact.paymentIntent, fact.amount);
        paymentIntentCreated(fact);
        break;
      case 'payment_intent_resolved':
        paymentIntentResolved(fact);
        break;
    }
  }

  for (const topUp of topUps.values())
    if (topUp.paymentIntent === undefined)
      violations.push(
        `top-up ${topUp.key} was fired by spend ${answers.get(`fired:${topUp.key}`)?.code} but Stripe never saw a PaymentIntent for it`,
      );
  for (const key of [...answers.keys()]) if (key.startsWith('fired:')) answers.delete(key);

  const result = new Map<string, ModelAccount>();
  for (const [id, owner] of accounts) {
    if (owner.debt > 0 && available(owner) > 0) throw new Error(`model broken: account ${id} has debt and available credits`);
    result.set(id, {
      available: available(owner),
      held: owner.held,
      debt: owner.debt,
      carry: decimalText(owner.carry),
      grants: owner.grants.map(({ key, amount, remaining, expiresAt, expired }) => ({ key, amount, remaining, expiresAt, expired })),
    });
  }
  return { accounts: result, answers, violations, events, voidable, requestKeys };
}
