/**
 * A reference model of one account's priced spending, written from SPEC ("A priced spend",
 * "Priced holds", invariant 16), not from the product's code: exact decimals as BigInt counts of
 * 10^-12 credits (rates have at most 12 decimal places, quantities are integers, so every cost is
 * exact there), the carry in [0, 1), and request keys whose first outcome is final. Credits of
 * plain spends and grants are plain numbers: the account has one never-expiring grant at a time,
 * so the spend order does not matter here.
 */
export const unitsPerCredit = 10n ** 12n;

/** `"0.000125"` → 125000000n (units of 10^-12). */
export function toUnits(decimal: string): bigint {
  const match = /^([0-9]+)(?:\.([0-9]{1,12}))?$/.exec(decimal);
  if (match === null) throw new Error(`model: not a decimal of at most 12 places: ${decimal}`);
  return BigInt(match[1] ?? '0') * unitsPerCredit + BigInt((match[2] ?? '').padEnd(12, '0'));
}

/** 125000000n → `"0.000125"`, without trailing zeros (as the database answers). */
export function fromUnits(units: bigint): string {
  const whole = units / unitsPerCredit;
  const fraction = (units % unitsPerCredit).toString().padStart(12, '0').replace(/0+$/, '');
  return fraction === '' ? whole.toString() : `${whole}.${fraction}`;
}

/** The most credits one spend may move: a balance holds at most 2^53 - 1. */
export const spendCreditsMax = BigInt(Number.MAX_SAFE_INTEGER);

export type ModelRates = Record<string, bigint>;

export function costOf(rates: ModelRates, quantities: Record<string, number>): bigint {
  let cost = 0n;
  for (const [dimension, quantity] of Object.entries(quantities)) {
    const rate = rates[dimension];
    if (rate === undefined) throw new Error(`model: no rate for ${dimension}`);
    cost += BigInt(quantity) * rate;
  }
  return cost;
}

interface ModelHold {
  amount: number;
  rates: ModelRates;
  version: number;
  quantities: Record<string, number>;
  status: 'pending' | 'captured' | 'voided';
}

interface StoredKey {
  operation: 'usage' | 'hold';
  payload: string;
  status: number;
  /** What the first success answered: its charge and cost (a replay answers them again). */
  amount?: number;
  cost?: string;
  version?: number;
}

export interface ModelAnswer {
  status: number;
  amount?: number;
  cost?: string;
  version?: number;
  replayed?: boolean;
}

/** Sorted keys, so that the payload of {a, b} equals that of {b, a}, as the API's hash does. */
const canonical = (value: Record<string, unknown>): string =>
  JSON.stringify(Object.fromEntries(Object.entries(value).sort(([left], [right]) => (left < right ? -1 : 1))));

export class PricedModel {
  available = 0;
  held = 0;
  /** In units of 10^-12 credits, always below one credit. */
  carry = 0n;
  /** The exact cost of every priced usage and capture that was accepted, and what they charged. */
  pricedCost = 0n;
  pricedCharged = 0n;
  rates: ModelRates;
  version: number;
  private keys = new Map<string, StoredKey>();
  readonly holds = new Map<string, ModelHold>();

  /** The card's rates in effect when the account starts, and their version. */
  constructor(rates: ModelRates, version: number) {
    this.rates = rates;
    this.version = version;
  }

  grant(credits: number): void {
    this.available += credits;
  }

  publish(rates: ModelRates): void {
    this.rates = rates;
    this.version += 1;
  }

  private prior(key: string, operation: StoredKey['operation'], payload: string): ModelAnswer | undefined {
    const stored = this.keys.get(key);
    if (stored === undefined) return undefined;
    if (stored.operation !== operation || stored.payload !== payload) return { status: 409 };
    return { status: stored.status, amount: stored.amount, cost: stored.cost, version: stored.version, replayed: true };
  }

  /** A usage of `amount` credits, or of `quantities` priced at the rates in effect with the carry. */
  usage(key: string, spend: { amount: number } | { quantities: Record<string, number> }): ModelAnswer {
    const payload = canonical('amount' in spend ? { amount: spend.amount } : { quantities: canonical(spend.quantities) });
    const prior = this.prior(key, 'usage', payload);
    if (prior !== undefined) return prior;
    const cost = 'amount' in spend ? undefined : costOf(this.rates, spend.quantities);
    const charge = cost === undefined ? BigInt((spend as { amount: number }).amount) : (this.carry + cost) / unitsPerCredit;
    // A spend that no balance could pay is bad input: refused, and not its key's first outcome.
    if (charge > spendCreditsMax) return { status: 400 };
    if (charge > BigInt(this.available)) {
      this.keys.set(key, { operation: 'usage', payload, status: 402 });
      return { status: 402 };
    }
    this.available -= Number(charge);
    if (cost !== undefined) this.charge(cost, charge);
    const answer = {
      status: 200,
      amount: Number(charge),
      cost: cost === undefined ? undefined : fromUnits(cost),
      version: cost === undefined ? undefined : this.version,
    };
    this.keys.set(key, { operation: 'usage', payload, ...answer });
    return answer;
  }

  /** A priced hold: reserves ceil(cost) of the most the call may use, at the version in effect. */
  hold(key: string, quantities: Record<string, number>): ModelAnswer {
    const payload = canonical({ quantities: canonical(quantities) });
    const prior = this.prior(key, 'hold', payload);
    if (prior !== undefined) return prior;
    const cost = costOf(this.rates, quantities);
    const reserve = (cost + unitsPerCredit - 1n) / unitsPerCredit;
    if (reserve > spendCreditsMax) return { status: 400 };
    if (reserve > BigInt(this.available)) {
      this.keys.set(key, { operation: 'hold', payload, status: 402 });
      return { status: 402 };
    }
    this.available -= Number(reserve);
    this.held += Number(reserve);
    this.holds.set(key, { amount: Number(reserve), rates: this.rates, version: this.version, quantities, status: 'pending' });
    const answer = { status: 201, amount: Number(reserve), cost: fromUnits(cost), version: this.version };
    this.keys.set(key, { operation: 'hold', payload, ...answer });
    return answer;
  }

  /** Captures by the used quantities at the hold's version with the carry; over the hold is 400. */
  capture(key: string, quantities: Record<string, number> | undefined): ModelAnswer {
    const hold = this.holds.get(key);
    if (hold === undefined) throw new Error('model: no such hold');
    if (hold.status !== 'pending') return { status: 409 };
    const cost = costOf(hold.rates, quantities ?? hold.quantities);
    const charge = (this.carry + cost) / unitsPerCredit;
    if (charge > BigInt(hold.amount)) return { status: 400 };
    this.charge(cost, charge);
    this.held -= hold.amount;
    this.available += hold.amount - Number(charge);
    hold.status = 'captured';
    return { status: 200, amount: Number(charge), cost: fromUnits(cost), version: hold.version };
  }

  void(key: string): ModelAnswer {
    const hold = this.holds.get(key);
    if (hold === undefined) throw new Error('model: no such hold');
    if (hold.status !== 'pending') return { status: 409 };
    this.held -= hold.amount;
    this.available += hold.amount;
    hold.status = 'voided';
    return { status: 200 };
  }

  private charge(cost: bigint, charge: bigint): void {
    this.carry = this.carry + cost - charge * unitsPerCredit;
    this.pricedCost += cost;
    this.pricedCharged += charge;
    if (this.carry < 0n || this.carry >= unitsPerCredit) throw new Error(`model: carry ${this.carry} left [0, 1)`);
  }
}
