/**
 * The workload generator: from a seed, the customer lifecycles to play, as one interleaved list
 * of steps. A step names its lifecycle, how long after the previous step it happens, and what
 * the customer, Stripe or the app does. Steps do not depend on each other by construction: one
 * whose precondition does not hold when it runs (a plan change without a subscription) does
 * nothing, so a history still plays after any of its steps is dropped (shrinking).
 */
import type { CardBehavior } from './stripe.js';

export type Behavior = 'always_invoice' | 'create_prorations' | 'none';

export type StepBody =
  | { kind: 'subscribe'; price: string; quantity: number; trial: boolean; extraPrice?: string }
  | { kind: 'change'; price: string; quantity: number; behavior: Behavior }
  | { kind: 'cancel'; mode: 'period_end' | 'now' | 'now_prorated' | 'at_month_start' | 'late' }
  | { kind: 'fail_renewal'; recoverAfter: number }
  | { kind: 'pack'; via: 'checkout' | 'link'; price: string; quantity: number }
  | { kind: 'refund'; payment: number; perMille: number; failAfter: number | undefined; yearly: boolean }
  | { kind: 'dispute'; payment: number; outcome: 'inquiry' | 'won' | 'lost'; closeAfter: number }
  | { kind: 'usage'; amount: number; atBoundary?: boolean; priced?: Priced }
  | { kind: 'limits'; perDay: number | null; perMonth: number | null }
  | { kind: 'admin_grant'; amount: number; expiresInDays: number | null; priority: number; source: 'promo' | 'admin' }
  | { kind: 'adjust'; amount: number }
  | { kind: 'auto_top_up'; enabled: boolean; threshold: number; pack: string; maxPerMonth: number }
  | { kind: 'card'; behavior: CardBehavior }
  /** `priced[i]`, when given and not null, replaces `amounts[i]` by a priced spend. */
  | { kind: 'batch'; amounts: number[]; priced?: (Priced | null)[] }
  | {
      kind: 'hold';
      amount: number;
      expiresIn: number;
      resolution: 'capture' | 'void' | 'expire';
      capturePerMille: number;
      priced?: Priced;
    }
  | { kind: 'quote'; amount: number; priced?: Priced }
  /** An operator publishes new rates (from `seed`) for `card`, effective `effectiveIn` seconds from now. */
  | { kind: 'price_change'; card: string; seed: number; effectiveIn: number }
  | { kind: 'resolve' }
  | { kind: 'wait' };
/** `kind` in the body is what happens; `label` the step kind it was generated for. */
export type Step = { lifecycle: number; after: number; label?: string } & StepBody;

/** A priced spend: a meter of the example catalog and what the call used of each dimension. */
export interface Priced {
  meter: string;
  quantities: Record<string, number>;
}

/** Every step kind the generator knows, by the name CI enables it with. */
export const allKinds = [
  'subscribe:monthly',
  'subscribe:yearly',
  'subscribe:seats',
  'trial:converted',
  'trial:cancelled',
  'trial:refused',
  'change:always_invoice',
  'change:create_prorations',
  'change:none',
  'change:seats',
  'change:interval',
  'change:yearly',
  'cancel:period_end',
  'cancel:now',
  'cancel:now_prorated',
  'payment:failed_recovered',
  'pack:checkout',
  'pack:link',
  'refund:partial',
  'refund:multiple',
  'refund:failed',
  'refund:yearly',
  'dispute:inquiry',
  'dispute:won',
  'dispute:lost',
  'usage',
  'batch',
  'hold:capture',
  'hold:void',
  'hold:expire',
  'subscribe:two_items',
  'invoice:other_subscription_line',
  'cancel:at_month_start',
  'cancel:late_yearly',
  'boundary:usage',
  'limits',
  'admin:grant',
  'admin:adjust',
  'topup:enable',
  'topup:toggle',
  'card:succeeded',
  'card:processing_succeeds',
  'card:processing_fails',
  'card:requires_action',
  'card:declined',
  'priced:usage',
  'priced:batch',
  'priced:hold',
  'priced:quote',
  'price:change',
  'chaos:restart',
  'chaos:replay',
] as const;
export type Kind = (typeof allKinds)[number];

/** A small, fast, seeded generator (mulberry32): the same seed gives the same history everywhere. */
export class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  integer(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }
  pick<T>(items: readonly T[]): T {
    return items[Math.floor(this.next() * items.length)]!;
  }
  chance(probability: number): boolean {
    return this.next() < probability;
  }
  shuffle<T>(items: T[]): T[] {
    for (let index = items.length - 1; index > 0; index -= 1) {
      const other = Math.floor(this.next() * (index + 1));
      [items[index], items[other]] = [items[other]!, items[index]!];
    }
    return items;
  }
}

const day = 86400;
/** The example catalog's meters and their dimensions (plans.example.json). */
const meters: Record<string, string[]> = {
  'openai/gpt-5': ['input_tokens', 'cached_input_tokens', 'output_tokens'],
  'openai/gpt-5-mini': ['input_tokens', 'output_tokens'],
  'anthropic/claude-sonnet-4.5': ['input_tokens', 'cache_read_tokens', 'output_tokens'],
  'images/generate': ['images'],
};
const rateCards = ['standard', 'volume'];

/**
 * What one model call used: token counts from a handful (a sub-credit step, so that the carry
 * matters) to tens of thousands, a few images; some dimensions left out or zero.
 */
function pricedSpend(random: Random): Priced {
  const meter = random.pick(Object.keys(meters));
  const quantities: Record<string, number> = {};
  for (const dimension of meters[meter]!) {
    if (random.chance(0.15)) continue;
    quantities[dimension] = dimension === 'images' ? random.integer(0, 3) : random.integer(0, random.pick([12, 400, 5000, 40_000]));
  }
  if (Object.keys(quantities).length === 0) quantities[meters[meter]![0]!] = random.integer(1, 2000);
  return { meter, quantities };
}

/**
 * New rates for every dimension of every meter, from a seed: token rates with 12 decimal places
 * (so that almost every spend leaves a fraction), image rates of a few credits with 12 places.
 */
export function ratesFor(seed: number): Record<string, Record<string, string>> {
  const random = new Random(seed);
  const digits = (count: number) => Array.from({ length: count }, () => random.integer(0, 9)).join('');
  const rates: Record<string, Record<string, string>> = {};
  for (const [meter, dimensions] of Object.entries(meters)) {
    rates[meter] = {};
    for (const dimension of dimensions)
      rates[meter]![dimension] =
        dimension === 'images' ? `${random.integer(1, 5)}.${digits(12)}` : `0.000${random.integer(1, 9)}${digits(8)}`;
  }
  return rates;
}

const monthlyPrices = ['price_starter_monthly', 'price_plus_monthly', 'price_pro_monthly'];
const yearlyPrices = ['price_plus_yearly', 'price_pro_yearly'];

/** The step kind a step exercises (for enabling kinds and for reports). */
export function kindOf(step: Step): string {
  if (step.label !== undefined) return step.label;
  switch (step.kind) {
    case 'subscribe':
      if (step.trial) return 'trial:converted';
      if (step.price.endsWith('_yearly')) return 'subscribe:yearly';
      return step.quantity > 1 ? 'subscribe:seats' : 'subscribe:monthly';
    case 'change':
      if (step.price.endsWith('_yearly')) return 'change:yearly';
      return `change:${step.behavior}`;
    case 'cancel':
      return `cancel:${step.mode}`;
    case 'fail_renewal':
      return 'payment:failed_recovered';
    case 'pack':
      return `pack:${step.via}`;
    case 'refund':
      return step.yearly ? 'refund:yearly' : step.failAfter !== undefined ? 'refund:failed' : 'refund:partial';
    case 'dispute':
      return `dispute:${step.outcome}`;
    case 'hold':
      return step.priced === undefined ? `hold:${step.resolution}` : 'priced:hold';
    case 'usage':
      return step.priced === undefined ? 'usage' : 'priced:usage';
    case 'batch':
      return step.priced === undefined ? 'batch' : 'priced:batch';
    case 'quote':
      return 'priced:quote';
    case 'price_change':
      return 'price:change';
    default:
      return step.kind;
  }
}

function stepFor(kind: Kind, random: Random, seats: boolean): StepBody | undefined {
  // More than one seat only where seats are enabled, so the other kinds are judged on their own.
  const quantity = () => (seats && random.chance(0.3) ? random.integer(2, 4) : 1);
  switch (kind) {
    case 'subscribe:monthly':
      return { kind: 'subscribe', price: random.pick(monthlyPrices), quantity: 1, trial: false };
    case 'subscribe:seats':
      return { kind: 'subscribe', price: random.pick(monthlyPrices), quantity: random.integer(2, 4), trial: false };
    case 'subscribe:yearly':
      return { kind: 'subscribe', price: random.pick(yearlyPrices), quantity: quantity(), trial: false };
    case 'trial:converted':
    case 'trial:refused':
      return { kind: 'subscribe', price: 'price_plus_monthly', quantity: 1, trial: true };
    case 'trial:cancelled':
      return { kind: 'cancel', mode: random.pick(['period_end', 'now'] as const) };
    case 'change:always_invoice':
    case 'change:create_prorations':
    case 'change:none':
      return { kind: 'change', price: random.pick(monthlyPrices), quantity: quantity(), behavior: kind.slice(7) as Behavior };
    case 'change:seats':
      return {
        kind: 'change',
        price: '',
        quantity: random.integer(1, 5),
        behavior: random.pick(['always_invoice', 'create_prorations'] as const),
      };
    case 'change:interval':
      return {
        kind: 'change',
        price: random.pick([...monthlyPrices, ...yearlyPrices]),
        quantity: quantity(),
        behavior: random.pick(['always_invoice', 'none'] as const),
      };
    case 'change:yearly':
      return { kind: 'change', price: random.pick(yearlyPrices), quantity: quantity(), behavior: 'always_invoice' };
    case 'cancel:period_end':
    case 'cancel:now':
    case 'cancel:now_prorated':
      return { kind: 'cancel', mode: kind.slice(7) as 'period_end' };
    case 'payment:failed_recovered':
      return { kind: 'fail_renewal', recoverAfter: random.integer(1, 5) * day + random.integer(0, 3600) };
    case 'pack:checkout':
    case 'pack:link':
      return {
        kind: 'pack',
        via: kind.slice(5) as 'checkout',
        price: random.pick(['price_pack_1000', 'price_pack_10000']),
        quantity: kind === 'pack:link' ? random.integer(1, 3) : 1,
      };
    case 'refund:partial':
    case 'refund:multiple':
    case 'refund:yearly':
      return {
        kind: 'refund',
        payment: random.integer(0, 5),
        perMille: random.pick([100, 250, 333, 500, 1000]),
        failAfter: undefined,
        yearly: kind === 'refund:yearly',
      };
    case 'refund:failed':
      return {
        kind: 'refund',
        payment: random.integer(0, 5),
        perMille: random.pick([250, 500, 1000]),
        failAfter: random.integer(1, 10) * day,
        yearly: false,
      };
    case 'dispute:inquiry':
    case 'dispute:won':
    case 'dispute:lost':
      return { kind: 'dispute', payment: random.integer(0, 5), outcome: kind.slice(8) as 'won', closeAfter: random.integer(2, 20) * day };
    case 'usage':
      return { kind: 'usage', amount: random.pick([1, 7, 50, 300, 1200, 5000]) };
    case 'batch':
      return { kind: 'batch', amounts: Array.from({ length: random.integer(2, 6) }, () => random.pick([1, 10, 100, 700])) };
    case 'hold:capture':
    case 'hold:void':
    case 'hold:expire':
      return {
        kind: 'hold',
        amount: random.pick([5, 100, 900, 3000]),
        expiresIn: random.integer(60, 86400),
        resolution: kind.slice(5) as 'capture',
        capturePerMille: random.integer(0, 1000),
      };
    case 'subscribe:two_items':
      return { kind: 'subscribe', price: 'price_plus_monthly', quantity: 1, trial: false, extraPrice: 'price_pro_monthly' };
    case 'invoice:other_subscription_line':
      return { kind: 'change', price: random.pick(monthlyPrices), quantity: 1, behavior: 'create_prorations' };
    case 'cancel:at_month_start':
      return { kind: 'cancel', mode: 'at_month_start' };
    case 'cancel:late_yearly':
      return { kind: 'cancel', mode: 'late' };
    case 'boundary:usage':
      return { kind: 'usage', amount: random.pick([1, 50, 300]), atBoundary: true };
    case 'limits':
      return {
        kind: 'limits',
        perDay: random.chance(0.7) ? random.pick([100, 500, 2000]) : null,
        perMonth: random.chance(0.5) ? random.pick([1000, 5000, 30000]) : null,
      };
    case 'admin:grant':
      return {
        kind: 'admin_grant',
        amount: random.pick([50, 500, 5000]),
        expiresInDays: random.chance(0.5) ? random.integer(1, 40) : null,
        priority: random.pick([0, 0, 5]),
        source: random.pick(['promo', 'admin'] as const),
      };
    case 'admin:adjust':
      return { kind: 'adjust', amount: random.pick([50, 300, -20, -400]) };
    case 'topup:enable':
      return {
        kind: 'auto_top_up',
        enabled: true,
        threshold: random.pick([100, 1000, 5000]),
        pack: random.pick(['pack_1000', 'pack_10000']),
        maxPerMonth: random.integer(1, 3),
      };
    case 'topup:toggle':
      return { kind: 'auto_top_up', enabled: false, threshold: 1000, pack: 'pack_1000', maxPerMonth: 2 };
    case 'card:succeeded':
      return { kind: 'card', behavior: { outcome: 'succeeded' } };
    case 'card:processing_succeeds':
    case 'card:processing_fails':
      return {
        kind: 'card',
        behavior: {
          outcome: 'processing',
          resolvesAfter: random.integer(1, 4) * day + random.integer(0, 3600),
          succeeds: kind.endsWith('succeeds'),
        },
      };
    case 'card:requires_action':
      return { kind: 'card', behavior: { outcome: 'requires_action' } };
    case 'card:declined':
      return { kind: 'card', behavior: { outcome: 'card_declined' } };
    case 'priced:usage':
      return { kind: 'usage', amount: 0, priced: pricedSpend(random) };
    case 'priced:batch': {
      // Priced and plain events mixed in one batch.
      const amounts = Array.from({ length: random.integer(2, 6) }, () => random.pick([1, 10, 100, 700]));
      return { kind: 'batch', amounts, priced: amounts.map(() => (random.chance(0.6) ? pricedSpend(random) : null)) };
    }
    case 'priced:hold': {
      // Held by the most the call may use, captured by what it used: up to 30 % more than the
      // hold asked for, which the hold's ceil(cost) may not cover (capture_exceeds_hold).
      const priced = pricedSpend(random);
      const someUsed = Object.values(priced.quantities).some((quantity) => quantity > 0);
      if (!someUsed) priced.quantities[Object.keys(priced.quantities)[0]!] = 1;
      return {
        kind: 'hold',
        amount: 0,
        expiresIn: random.integer(60, 86400),
        resolution: random.chance(0.8) ? 'capture' : 'void',
        capturePerMille: random.pick([0, 250, 600, 1000, 1000, 1100, 1300]),
        priced,
      };
    }
    case 'priced:quote':
      return random.chance(0.8)
        ? { kind: 'quote', amount: 0, priced: pricedSpend(random) }
        : { kind: 'quote', amount: random.pick([1, 50, 5000]) };
    case 'price:change':
      return {
        kind: 'price_change',
        card: random.pick(rateCards),
        seed: random.integer(1, 2 ** 31),
        effectiveIn: random.chance(0.5) ? 0 : random.integer(60, 2 * day),
      };
    case 'chaos:restart':
    case 'chaos:replay':
      return undefined;
  }
}

/** Spends that follow a top-up or limit set-up, so that the account crosses its threshold or its limit. */
const spendsAfter = new Set<string>([
  'topup:enable',
  'topup:toggle',
  'limits',
  'card:succeeded',
  'card:processing_succeeds',
  'card:processing_fails',
  'card:requires_action',
  'card:declined',
  'admin:adjust',
]);

/** `count` lifecycles of `stepsEach` steps from `seed`, over the enabled kinds, interleaved. */
export function generate(seed: number, count: number, kinds: ReadonlySet<string>, stepsEach = 14): Step[] {
  const random = new Random(seed);
  const enabled = allKinds.filter((kind) => kinds.has(kind) && !kind.startsWith('chaos:') && !pricedKinds.has(kind));
  const starts: Kind[] = enabled.filter((kind) => kind.startsWith('subscribe:') || kind.startsWith('pack:') || kind === 'trial:converted');
  // A yearly refund needs a yearly subscription to start with.
  if (kinds.has('refund:yearly')) starts.push('subscribe:yearly', 'subscribe:yearly');
  const seats = kinds.has('subscribe:seats') || kinds.has('change:seats');
  const lifecycles: Step[][] = [];
  for (let lifecycle = 0; lifecycle < count; lifecycle += 1) {
    const steps: Step[] = [];
    const add = (kind: Kind, after: number) => {
      const body = stepFor(kind, random, seats);
      if (body !== undefined) steps.push({ lifecycle, after, label: kind, ...body } as Step);
    };
    if (starts.length > 0) add(random.pick(starts), random.integer(0, 3 * day));
    // A lifecycle's pace: most move a few days between steps, one in four weeks (whole years then pass).
    const pace = random.chance(0.25) ? 20 * day : 4 * day;
    for (let index = 1; index < stepsEach && enabled.length > 0; index += 1) {
      if (random.chance(0.12)) steps.push({ lifecycle, kind: 'wait', after: random.integer(10, 40) * day });
      const kind = random.pick(enabled);
      // Some kinds need a set-up step before them: a yearly payment, a trial already used.
      if (kind === 'refund:yearly' || kind === 'cancel:late_yearly' || kind === 'cancel:at_month_start')
        add('subscribe:yearly', random.integer(0, day));
      if (kind === 'invoice:other_subscription_line') add('subscribe:monthly', random.integer(0, day));
      if ((kind === 'topup:enable' || kind.startsWith('card:')) && random.chance(0.5)) add('pack:checkout', random.integer(0, day));
      if (kind === 'trial:refused') {
        add('trial:converted', random.integer(0, day));
        add('cancel:now', random.integer(0, day));
      }
      add(kind, random.integer(0, pace));
      if (kind === 'refund:multiple') add(kind, random.integer(0, 2 * day));
      if (kind === 'invoice:other_subscription_line') {
        // Prorations left pending by an immediate cancellation ride on the next subscription's first invoice.
        add('cancel:now', random.integer(0, day));
        add('subscribe:monthly', random.integer(0, day));
      }
      if (kind === 'topup:toggle') {
        // Off, then on again at once: neither may charge nor reset the month's count.
        const body = stepFor('topup:enable', random, seats) as Extract<StepBody, { kind: 'auto_top_up' }>;
        steps.push({ lifecycle, after: random.integer(0, 600), label: 'topup:toggle', ...body });
      }
      if (spendsAfter.has(kind) && kinds.has('usage')) {
        for (let spend = random.integer(1, 4); spend > 0; spend -= 1)
          add(random.pick(['usage', 'usage', 'batch'] as const), random.integer(0, day));
      }
      const last = steps[steps.length - 1];
      if (last?.kind === 'hold' && last.resolution !== 'expire') steps.push({ lifecycle, kind: 'resolve', after: random.integer(0, 3600) });
    }
    lifecycles.push(steps);
  }
  // Interleave the lifecycles, each keeping its order; a step's `after` runs from the step before it.
  const merged: Step[] = [];
  const cursors = lifecycles.map(() => 0);
  for (;;) {
    const open = lifecycles.map((steps, index) => (cursors[index]! < steps.length ? index : -1)).filter((index) => index >= 0);
    if (open.length === 0) break;
    const index = random.pick(open);
    const step = lifecycles[index]![cursors[index]!]!;
    cursors[index]! += 1;
    merged.push({ ...step, after: Math.floor(step.after / Math.max(1, count / 2)) });
  }
  return withPriced(merged, seed, count, kinds);
}

/** The priced kinds, drawn from a stream of their own (see withPriced). */
const pricedKinds = new Set<string>(['priced:usage', 'priced:batch', 'priced:hold', 'priced:quote', 'price:change']);

/**
 * Priced usage and price changes, woven into a history from a random stream of their own: each
 * one takes part of the wait before the step it precedes, so every other step keeps its instant
 * and the lifecycles a seed played before priced usage existed are played again as they were
 * (CI's seeds among them), now with priced calls between their steps.
 */
function withPriced(steps: Step[], seed: number, count: number, kinds: ReadonlySet<string>): Step[] {
  const enabled = allKinds.filter((kind) => pricedKinds.has(kind) && kinds.has(kind));
  if (enabled.length === 0) return steps;
  const random = new Random(seed ^ 0x7a11c0);
  const woven: Step[] = [];
  for (const step of steps) {
    let left = step.after;
    const add = (lifecycle: number, kind: Kind) => {
      const after = Math.floor(left * random.next() * 0.5);
      left -= after;
      const body = stepFor(kind, random, false);
      if (body !== undefined) woven.push({ lifecycle, after, label: kind, ...body } as Step);
    };
    if (random.chance(0.2)) {
      const lifecycle = random.integer(0, count - 1);
      const kind = random.pick(enabled);
      add(lifecycle, kind);
      // A price change between a priced hold and its capture: the capture keeps the hold's version.
      if (kind === 'priced:hold' && kinds.has('price:change') && random.chance(0.3)) add(lifecycle, 'price:change');
      const last = woven[woven.length - 1];
      if (kind === 'priced:hold') woven.push({ lifecycle, kind: 'resolve', after: Math.floor(left * random.next() * 0.5) });
      if (kind === 'priced:hold') left -= woven[woven.length - 1]!.after;
      if (last?.kind === 'price_change' && kinds.has('priced:usage')) add(lifecycle, 'priced:usage');
    }
    woven.push({ ...step, after: left });
  }
  return woven;
}
