import type { Database } from '../db/database.js';
import { TallyError, accountNotFound, assertInvariant } from '../errors.js';
import { type Meter, checkQuantities } from '../pricing/meters.js';
import type {
  AccountInput,
  AdjustmentInput,
  BatchEvent,
  GrantInput,
  HoldInput,
  QuoteInput,
  SpendLimitsInput,
  UsageInput,
} from './commands.js';
import { payloadHash } from './payload-hash.js';

/**
 * The money core seen from TypeScript. Every operation is one call of a SQL function from
 * db/functions/ (one round trip, one transaction); this class only shapes arguments and
 * answers. A keyed operation answers an Outcome: its first outcome is final and stored, so a
 * refusal such as 402 comes back as a value, not an exception.
 */
export interface Outcome {
  status: number;
  body: Record<string, unknown>;
}

export type Actor = 'app' | 'admin' | 'stripe' | 'system';

export interface LedgerOptions {
  /** The time used for expiry decisions; undefined means the database's clock. */
  clock?: () => Date;
  adjustmentCreditsMax: number;
  /** The most one admin grant may give (the catalog's limits.admin_grant_credits_max); unset, no limit but the safe range. */
  grantCreditsMax?: number;
  /** The catalog's meters, which priced spends name (none: every priced spend is unknown_meter). */
  meters?: readonly Meter[];
  /** Told of each grant an operator makes (not of replays); the alert rule on grants listens here. It must not throw. */
  watchGrant?: (grant: { grantId: number; accountId: string; amount: number; source: string }) => Promise<void>;
}

export interface Balance {
  account_id: string;
  available: number;
  held: number;
  debt: number;
}

export class Ledger {
  constructor(
    private readonly db: Database,
    private readonly options: LedgerOptions,
  ) {}

  private now(): Date | null {
    return this.options.clock?.() ?? null;
  }

  /** Whether a time has passed, by the clock that decides expiry everywhere (the database's, unless a test clock is set). */
  private async isPast(time: Date): Promise<boolean> {
    const { rows } = await this.db.query<{ past: boolean }>('select $1::timestamptz <= coalesce($2::timestamptz, now()) as past', [
      time,
      this.now(),
    ]);
    return rows[0]?.past === true;
  }

  /** Creates or updates an account; a reported device fingerprint arrives here already hashed. */
  async upsertAccount(accountId: string, input: AccountInput, deviceFingerprintHash?: string): Promise<Record<string, unknown>> {
    const result = await this.db.query<{ account: Record<string, unknown> }>(
      `with before as (select to_jsonb(a) - 'available' - 'held' - 'debt' as row from accounts a where id = $1),
       upserted as (
         insert into accounts (id, email, name, metadata, device_fingerprint_hash) values ($1, $3, $5, coalesce($6, '{}'::jsonb), $7)
         on conflict (id) do update set
           email = case when $2 then excluded.email else accounts.email end,
           name = case when $4 then excluded.name else accounts.name end,
           metadata = coalesce($6, accounts.metadata),
           device_fingerprint_hash = coalesce($7, accounts.device_fingerprint_hash),
           updated_at = now()
         returning *),
       audited as (
         insert into audit_log (account_id, actor, action, before, after)
         select $1, 'app', 'account.upsert', (select row from before), to_jsonb(u) - 'available' - 'held' - 'debt' from upserted u)
       select jsonb_build_object('id', id, 'email', email, 'name', name, 'metadata', metadata,
         'stripe_customer_id', stripe_customer_id, 'created_at', tally_iso(created_at)) as account from upserted`,
      [
        accountId,
        input.email !== undefined,
        input.email ?? null,
        input.name !== undefined,
        input.name ?? null,
        input.metadata ?? null,
        deviceFingerprintHash ?? null,
      ],
    );
    const row = result.rows[0];
    assertInvariant(row !== undefined, 'account upsert returned no row');
    return row.account;
  }

  async getAccount(accountId: string): Promise<Record<string, unknown>> {
    // The balance first: the period's first read gives the recurring grants the list then shows.
    const balance = await this.balance(accountId);
    const result = await this.db.query<{ account: Record<string, unknown> }>(
      `select jsonb_build_object('id', a.id, 'email', a.email, 'name', a.name, 'metadata', a.metadata,
         'stripe_customer_id', a.stripe_customer_id, 'created_at', tally_iso(a.created_at), 'flagged', a.flagged,
         'low_balance_threshold', a.low_balance_threshold,
         'auto_top_up', (select jsonb_build_object('enabled', t.enabled, 'threshold', t.threshold, 'pack_id', t.pack_id,
             'max_per_month', t.max_per_month, 'failures_in_row', t.failures_in_row, 'updated_at', tally_iso(t.updated_at))
           from auto_top_ups t where t.account_id = a.id),
         'subscription', (select jsonb_build_object('id', s.id, 'status', s.status, 'plan_id', s.plan_id,
             'interval', s.billing_interval, 'current_period_start', tally_iso(s.current_period_start),
             'current_period_end', tally_iso(s.current_period_end), 'cancel_at_period_end', s.cancel_at_period_end,
             'trial_end', tally_iso(s.trial_end))
           from subscriptions s where s.account_id = a.id order by s.event_created desc, s.id limit 1),
         'trial', (select jsonb_build_object('grant_id', 'grant_' || g.id, 'credits', g.amount, 'remaining', g.remaining,
             'expires_at', tally_iso(g.expires_at))
           from grants g where g.account_id = a.id and g.source = 'trial' order by g.id limit 1),
         'grants', coalesce((select jsonb_agg(tally_grant_json(g) order by g.priority, g.expires_at, g.created_at, g.id)
            from grants g where g.account_id = a.id and g.live
            and (g.expires_at is null or g.expires_at > coalesce($2, now()))), '[]'::jsonb)) as account
       from accounts a where a.id = $1`,
      [accountId, this.now()],
    );
    const row = result.rows[0];
    if (row === undefined) throw accountNotFound(accountId);
    const { account_id: _, ...limits } = await this.spendLimits(accountId);
    return { ...row.account, limits, balance };
  }

  /**
   * The balance now: grants past their expiry stop counting at once, before any sweep. The first
   * read of a period gives the recurring grants the account's plan gives (tally_balance).
   */
  async balance(accountId: string): Promise<Balance> {
    const row = await this.db.callJson<Balance>('select tally_balance($1, $2) as result', [accountId, this.now()]);
    assertInvariant(row.available >= 0, `account ${accountId} has negative available ${row.available}`);
    return row;
  }

  /**
   * What the account may use: its plan and where it comes from (its subscription, a trial, the
   * free plan, or none), its meters, features, rate card and recurring grants.
   */
  async entitlements(accountId: string): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_entitlements_json($1, $2) as result', [accountId, this.now()]);
  }

  /**
   * Checks a priced spend's meter and quantities against the catalog (unknown_meter, or
   * invalid_request naming a dimension the meter lacks); a spend of credits passes. Called before
   * a spend is queued, so that bad input never reaches a batch.
   */
  checkSpend(input: { meter?: string | undefined; quantities?: Record<string, number> | undefined }, field = 'quantities'): void {
    if (input.meter !== undefined) checkQuantities(this.options.meters ?? [], input.meter, input.quantities ?? {}, field);
  }

  async usage(accountId: string, input: UsageInput, actor: Actor): Promise<Outcome> {
    this.checkSpend(input);
    const { idempotency_key: key, ...payload } = input;
    if (input.meter !== undefined) {
      return this.db.callJson<Outcome>('select tally_priced_usage($1, $2, $3, $4, $5, $6, $7, $8) as result', [
        accountId,
        input.meter,
        JSON.stringify(input.quantities),
        key,
        payloadHash(payload),
        actor,
        usageReference(input),
        this.now(),
      ]);
    }
    return this.db.callJson<Outcome>('select tally_usage($1, $2, $3, $4, $5, $6, $7) as result', [
      accountId,
      input.amount,
      key,
      payloadHash(payload),
      actor,
      usageReference(input),
      this.now(),
    ]);
  }

  /**
   * A batch of usage events in one transaction; one answer per event, in order. The actor is
   * one for the whole batch or one per event. The events go to SQL as parallel arrays, one
   * element per event, which tally_usage_batch reads as a set. A priced event goes with amount 0
   * and its meter and quantities, which the batch prices.
   */
  async usageBatch(events: BatchEvent[], actor: Actor | Actor[]): Promise<Outcome[]> {
    const accountIds: string[] = [];
    const amounts: number[] = [];
    const keys: string[] = [];
    const hashes: string[] = [];
    const references: Record<string, unknown>[] = [];
    const actors: Actor[] = [];
    const meters: (string | null)[] = [];
    const quantities: (string | null)[] = [];
    events.forEach((event, index) => {
      this.checkSpend(event, `events.${index}.quantities`);
      const { idempotency_key: key, account_id: accountId, ...payload } = event;
      accountIds.push(accountId);
      amounts.push(event.amount ?? 0);
      keys.push(key);
      hashes.push(payloadHash(payload));
      references.push(usageReference(event));
      meters.push(event.meter ?? null);
      quantities.push(event.quantities === undefined ? null : JSON.stringify(event.quantities));
      const eventActor = Array.isArray(actor) ? actor[index] : actor;
      assertInvariant(eventActor !== undefined, `batch event ${index} has no actor`);
      actors.push(eventActor);
    });
    const priced = meters.some((meter) => meter !== null);
    const outcomes = await this.db.callJson<Outcome[]>(
      priced
        ? 'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7, $8::text[], $9::jsonb[]) as result'
        : 'select tally_usage_batch($1::text[], $2::bigint[], $3::text[], $4::text[], $5::jsonb[], $6::text[], $7) as result',
      priced
        ? [accountIds, amounts, keys, hashes, references, actors, this.now(), meters, quantities]
        : [accountIds, amounts, keys, hashes, references, actors, this.now()],
    );
    assertInvariant(outcomes.length === events.length, 'batch answered a different number of results');
    return outcomes;
  }

  async hold(accountId: string, input: HoldInput, actor: Actor): Promise<Outcome> {
    this.checkSpend(input);
    const { idempotency_key: key, ...payload } = input;
    if (input.meter !== undefined) {
      return this.db.callJson<Outcome>('select tally_priced_hold($1, $2, $3, $4, $5, $6, $7, $8) as result', [
        accountId,
        input.meter,
        JSON.stringify(input.quantities),
        input.expires_in_seconds,
        key,
        payloadHash(payload),
        actor,
        this.now(),
      ]);
    }
    return this.db.callJson<Outcome>('select tally_hold($1, $2, $3, $4, $5, $6, $7) as result', [
      accountId,
      input.amount,
      input.expires_in_seconds,
      key,
      payloadHash(payload),
      actor,
      this.now(),
    ]);
  }

  /**
   * What a spend would charge now and whether it would pass (`reason`: the refusal it would
   * get), writing nothing: no carry moves, no key is taken.
   */
  async quote(accountId: string, input: QuoteInput): Promise<Record<string, unknown>> {
    this.checkSpend(input);
    return this.db.callJson('select tally_quote($1, $2, $3, $4, $5) as result', [
      accountId,
      input.amount ?? null,
      input.meter ?? null,
      input.quantities === undefined ? null : JSON.stringify(input.quantities),
      this.now(),
    ]);
  }

  /**
   * Captures `amount` of the hold, or all of it when the amount is left out (a priced hold: at
   * the quantities it held, priced as capturePriced prices them).
   */
  async capture(holdId: string, amount: number | undefined, actor: Actor): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_capture($1, $2, $3, $4) as result', [parseHoldId(holdId), amount ?? null, actor, this.now()]);
  }

  /**
   * Captures a priced hold by what the call used: `quantities` priced by the hold's rate card
   * version with the account's carry; charging more than the hold is capture_exceeds_hold.
   */
  async capturePriced(holdId: string, quantities: Record<string, number>, actor: Actor): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_priced_capture($1, $2, $3, $4) as result', [
      parseHoldId(holdId),
      JSON.stringify(quantities),
      actor,
      this.now(),
    ]);
  }

  async void(holdId: string, actor: Actor): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_void($1, $2, $3) as result', [parseHoldId(holdId), actor, this.now()]);
  }

  async grant(accountId: string, input: GrantInput): Promise<Outcome> {
    const { idempotency_key: key, ...payload } = input;
    const expiresAt = input.expires_at === undefined ? null : new Date(input.expires_at);
    if (expiresAt !== null && (await this.isPast(expiresAt))) {
      throw new TallyError('invalid_request', 400, 'expires_at: must be in the future', { field: 'expires_at' });
    }
    const grantCreditsMax = this.options.grantCreditsMax;
    if (grantCreditsMax !== undefined && input.amount > grantCreditsMax) {
      throw new TallyError('grant_exceeds_limit', 400, `a grant may give at most ${grantCreditsMax} credits`, { limit: grantCreditsMax });
    }
    const outcome = await this.db.callJson<Outcome>('select tally_admin_grant($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) as result', [
      accountId,
      input.amount,
      input.source,
      input.priority,
      expiresAt,
      {},
      key,
      payloadHash(payload),
      input.reason,
      this.now(),
    ]);
    if (outcome.status === 201 && outcome.body.replayed !== true && this.options.watchGrant !== undefined) {
      await this.options.watchGrant({
        grantId: Number(String(outcome.body.id).replace('grant_', '')),
        accountId,
        amount: input.amount,
        source: input.source,
      });
    }
    return outcome;
  }

  async adjust(accountId: string, input: AdjustmentInput): Promise<Outcome> {
    if (Math.abs(input.amount) > this.options.adjustmentCreditsMax) {
      throw new TallyError('adjustment_exceeds_limit', 400, `an adjustment may move at most ${this.options.adjustmentCreditsMax} credits`, {
        limit: this.options.adjustmentCreditsMax,
      });
    }
    const { idempotency_key: key, ...payload } = input;
    return this.db.callJson<Outcome>('select tally_adjust($1, $2, $3, $4, $5, $6) as result', [
      accountId,
      input.amount,
      key,
      payloadHash(payload),
      input.reason,
      this.now(),
    ]);
  }

  /** The account's spend limits and what was spent in the current UTC day and month (migration 0015). */
  async spendLimits(accountId: string): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_spend_limits_json($1, $2) as result', [accountId, this.now()]);
  }

  /** Sets, changes or removes spend limits: a window left out keeps its limit, null removes it. */
  async setSpendLimits(accountId: string, input: SpendLimitsInput, actor: Actor): Promise<Record<string, unknown>> {
    return this.db.callJson('select tally_set_spend_limits($1, $2, $3, $4, $5, $6, $7) as result', [
      accountId,
      input.per_day !== undefined,
      input.per_day ?? null,
      input.per_month !== undefined,
      input.per_month ?? null,
      actor,
      this.now(),
    ]);
  }

  /** Throws account_not_found for an account that does not exist; reads nothing else and gives nothing. */
  private async mustExist(accountId: string): Promise<void> {
    const { rowCount } = await this.db.query('select 1 from accounts where id = $1', [accountId]);
    if (rowCount === 0) throw accountNotFound(accountId);
  }

  /** Entries newest first; the cursor is the id of the last entry of the previous page. */
  async entries(accountId: string, limit: number, cursor: string | undefined): Promise<{ entries: unknown[]; next_cursor: string | null }> {
    const result = await this.db.query<{ id: number; entry: unknown }>(
      `select e.id, tally_entry_json(e) as entry from entries e
       where e.account_id = $1 and ($2::bigint is null or e.id < $2) order by e.id desc limit $3`,
      [accountId, cursor ?? null, limit + 1],
    );
    if (result.rows.length === 0) await this.mustExist(accountId);
    const page = result.rows.slice(0, limit);
    const last = page[page.length - 1];
    const nextCursor = result.rows.length > limit && last !== undefined ? String(last.id) : null;
    return { entries: page.map((row) => row.entry), next_cursor: nextCursor };
  }

  /** Releases holds and expires grants that are due, one account per transaction; answers how many. */
  async settleDue(accountCountMax: number): Promise<number> {
    const due = await this.dueAccounts(accountCountMax);
    for (const accountId of due) await this.settleAccount(accountId);
    return due.length;
  }

  /** Accounts with a hold or a grant past due, at most `accountCountMax`, none of `skipped`. */
  async dueAccounts(accountCountMax: number, skipped: string[] = []): Promise<string[]> {
    const due = await this.db.query<{ account_id: string }>(
      `select account_id from (
         (select account_id from holds where status = 'pending' and expires_at <= coalesce($1, now())
            and account_id <> all($3) order by expires_at limit $2)
         union
         (select account_id from grants where live and expires_at <= coalesce($1, now())
            and account_id <> all($3) order by expires_at limit $2)) due
       order by account_id limit $2`,
      [this.now(), accountCountMax, skipped],
    );
    return due.rows.map((row) => row.account_id);
  }

  /** Brings one account up to now, in its own transaction under its row lock. */
  async settleAccount(accountId: string): Promise<void> {
    await this.db.query('select tally_settle_account($1, $2)', [accountId, this.now()]);
  }
}

function usageReference(input: {
  description?: string | undefined;
  metadata?: Record<string, unknown> | undefined;
}): Record<string, unknown> {
  const reference: Record<string, unknown> = {};
  if (input.description !== undefined) reference.description = input.description;
  if (input.metadata !== undefined) reference.metadata = input.metadata;
  return reference;
}

export function parseHoldId(holdId: string): number {
  const match = /^hold_([0-9]{1,15})$/.exec(holdId);
  if (match?.[1] === undefined) throw new TallyError('hold_not_found', 404, `no hold with id ${holdId}`);
  return Number(match[1]);
}
