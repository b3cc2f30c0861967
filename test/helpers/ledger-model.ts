/**
 * A small in-memory reference model of one account's ledger: grants with priority and expiry,
 * spends, holds with lifetimes, captures, voids, request keys, time and spend limits. It states
 * the rules in the plainest way, so that the database can be compared with it after every step.
 */
export interface ModelGrant {
  seq: number;
  priority: number;
  createdAt: number;
  expiresAt: number | null;
  remaining: number;
}

interface ModelHold {
  amount: number;
  allocations: { grant: ModelGrant; credits: number }[];
  status: 'pending' | 'captured' | 'voided' | 'expired';
  expiresAt: number;
  createdSeq: number;
  /** The UTC day and month the hold was made in, and whether it counted against the limits. */
  day: string;
  month: string;
  counted: boolean;
}

/** Spend limits in credits per UTC day and per UTC month (null: none in that window). */
export interface ModelLimits {
  day: number | null;
  month: number | null;
}

const dayOf = (time: number): string => new Date(time).toISOString().slice(0, 10);
const monthOf = (time: number): string => new Date(time).toISOString().slice(0, 7);

interface StoredKey {
  operation: string;
  payload: string;
  status: number;
}

export class LedgerModel {
  grants: ModelGrant[] = [];
  held = 0;
  private holds = new Map<string, ModelHold>();
  private keys = new Map<string, StoredKey>();
  private seq = 0;
  /**
   * What was spent in a window: usage and holds, a hold counted for its amount when made and
   * giving back what it releases while its window is still the counter's. The counters move to
   * a new window only when a spend is checked against them, as the database's do.
   */
  private counter = { day: '', dayCredits: 0, month: '', monthCredits: 0 };

  /** Limits are set before the account's first spend; undefined: the account has none. */
  constructor(
    public now: number,
    readonly limits?: ModelLimits,
  ) {
    this.counter.day = dayOf(now);
    this.counter.month = monthOf(now);
  }

  /** What was spent in the current day and month, as GET /v1/accounts/{id}/limits answers. */
  spentNow(): { day: number; month: number } {
    return {
      day: this.counter.day >= dayOf(this.now) ? this.counter.dayCredits : 0,
      month: this.counter.month >= monthOf(this.now) ? this.counter.monthCredits : 0,
    };
  }

  /** Whether the limits let `amount` be spent now (always, without limits). */
  limitAllows(amount: number): boolean {
    if (this.limits === undefined) return true;
    const spent = this.spentNow();
    return (
      (this.limits.day === null || spent.day + amount <= this.limits.day) &&
      (this.limits.month === null || spent.month + amount <= this.limits.month)
    );
  }

  /** Checks a spend against the limits, and counts it when they let it through. */
  private countSpend(amount: number): boolean {
    if (this.limits === undefined) return true;
    if (dayOf(this.now) > this.counter.day) this.counter = { ...this.counter, day: dayOf(this.now), dayCredits: 0 };
    if (monthOf(this.now) > this.counter.month) this.counter = { ...this.counter, month: monthOf(this.now), monthCredits: 0 };
    if (!this.limitAllows(amount)) return false;
    this.counter.dayCredits += amount;
    this.counter.monthCredits += amount;
    return true;
  }

  isLive(grant: ModelGrant): boolean {
    return grant.expiresAt === null || grant.expiresAt > this.now;
  }

  available(): number {
    return this.grants.filter((grant) => this.isLive(grant)).reduce((sum, grant) => sum + grant.remaining, 0);
  }

  effectiveRemaining(): number[] {
    return this.grants.map((grant) => (this.isLive(grant) ? grant.remaining : 0));
  }

  /** Answers a key seen before, or undefined to go on. */
  private replay(key: string, operation: string, payload: string): number | undefined {
    const prior = this.keys.get(key);
    if (prior === undefined) return undefined;
    return prior.operation === operation && prior.payload === payload ? prior.status : 409;
  }

  private spendOrder(): ModelGrant[] {
    const expiry = (grant: ModelGrant) => grant.expiresAt ?? Number.POSITIVE_INFINITY;
    return this.grants
      .filter((grant) => grant.remaining > 0 && this.isLive(grant))
      .sort((a, b) => a.priority - b.priority || expiry(a) - expiry(b) || a.createdAt - b.createdAt || a.seq - b.seq);
  }

  private take(amount: number): { grant: ModelGrant; credits: number }[] {
    const allocations: { grant: ModelGrant; credits: number }[] = [];
    let left = amount;
    for (const grant of this.spendOrder()) {
      if (left === 0) break;
      const credits = Math.min(grant.remaining, left);
      grant.remaining -= credits;
      allocations.push({ grant, credits });
      left -= credits;
    }
    if (left !== 0) throw new Error('model: take beyond available');
    return allocations;
  }

  private release(hold: ModelHold, captured: number, status: ModelHold['status']): void {
    let left = hold.amount - captured;
    for (const allocation of [...hold.allocations].reverse()) {
      if (left === 0) break;
      const give = Math.min(allocation.credits, left);
      left -= give;
      if (this.isLive(allocation.grant)) allocation.grant.remaining += give;
    }
    this.held -= hold.amount;
    hold.status = status;
    const released = hold.amount - captured;
    if (hold.counted && hold.day === this.counter.day) this.counter.dayCredits -= released;
    if (hold.counted && hold.month === this.counter.month) this.counter.monthCredits -= released;
  }

  /** Releases holds past their expiry (oldest first); expired grants count for nothing. */
  settle(): void {
    const due = [...this.holds.values()].filter((hold) => hold.status === 'pending' && hold.expiresAt <= this.now);
    for (const hold of due.sort((a, b) => a.createdSeq - b.createdSeq)) this.release(hold, 0, 'expired');
    for (const grant of this.grants) if (!this.isLive(grant)) grant.remaining = 0;
  }

  grant(key: string, amount: number, priority: number, expiresInSeconds: number | null): number {
    const payload = JSON.stringify([amount, priority, expiresInSeconds === null ? null : this.now + expiresInSeconds * 1000]);
    const replayed = this.replay(key, 'grant', payload);
    if (replayed !== undefined) return replayed;
    this.settle();
    this.seq += 1;
    this.grants.push({
      seq: this.seq,
      priority,
      createdAt: this.now,
      expiresAt: expiresInSeconds === null ? null : this.now + expiresInSeconds * 1000,
      remaining: amount,
    });
    this.keys.set(key, { operation: 'grant', payload, status: 201 });
    return 201;
  }

  usage(key: string, amount: number): number {
    const replayed = this.replay(key, 'usage', String(amount));
    if (replayed !== undefined) return replayed;
    this.settle();
    const status = this.available() < amount || !this.countSpend(amount) ? 402 : 200;
    if (status === 200) this.take(amount);
    this.keys.set(key, { operation: 'usage', payload: String(amount), status });
    return status;
  }

  hold(key: string, amount: number, lifetimeSeconds: number): number {
    const payload = JSON.stringify([amount, lifetimeSeconds]);
    const replayed = this.replay(key, 'hold', payload);
    if (replayed !== undefined) return replayed;
    this.settle();
    const status = this.available() < amount || !this.countSpend(amount) ? 402 : 201;
    if (status === 201) {
      this.seq += 1;
      this.holds.set(key, {
        amount,
        allocations: this.take(amount),
        status: 'pending',
        expiresAt: this.now + lifetimeSeconds * 1000,
        createdSeq: this.seq,
        day: dayOf(this.now),
        month: monthOf(this.now),
        counted: this.limits !== undefined,
      });
      this.held += amount;
    }
    this.keys.set(key, { operation: 'hold', payload, status });
    return status;
  }

  hasHold(key: string): boolean {
    return this.holds.has(key);
  }

  /** Whether the hold can still be captured or voided now. */
  isPendingHold(key: string): boolean {
    const hold = this.holds.get(key);
    return hold !== undefined && hold.status === 'pending' && hold.expiresAt > this.now;
  }

  /** captured undefined means void. Returns the status and, for 409, the hold's status. */
  resolve(key: string, captured: number | undefined): { status: number; holdStatus?: string } {
    const hold = this.holds.get(key);
    if (hold === undefined) throw new Error('model: no such hold');
    if (hold.status !== 'pending') return { status: 409, holdStatus: hold.status };
    if (hold.expiresAt <= this.now) return { status: 409, holdStatus: 'expired' };
    if (captured !== undefined && captured > hold.amount) return { status: 400 };
    this.release(hold, captured ?? 0, captured === undefined ? 'voided' : 'captured');
    this.settle();
    return { status: 200 };
  }
}
