import type pg from 'pg';
import type { Database } from '../db/database.js';
import { accountNotFound } from '../errors.js';
import type { SubscriptionState } from '../stripe/shapes.js';
import type { Plan } from './catalog.js';
import type { TrialGate } from './checkout.js';
import type { ClaimHasher, ClaimKind } from './claim-hasher.js';
import { grantOnce, lockAccount, type EffectContext } from './effect-context.js';

/**
 * Trials that cannot be abused. A subscription that first enters `trialing` on a plan with a
 * trial gets the plan's trial credits only if the account, its normalized email, its device
 * fingerprint and the subscription's card fingerprint have never had a trial. Each of those is
 * a unique claim (a keyed hash) inserted in the transaction of the grant, so claims that race
 * yield one trial. A refused trial gets no grant, an alert, and its subscription is cancelled
 * through the Stripe API after the transaction commits.
 */
export type RefusalReason = `${ClaimKind}_had_trial`;

const gmailDomains = new Set(['gmail.com', 'googlemail.com']);

/** Lower case; no `+tag`; for Gmail, no dots and one domain. Undefined for a non-address. */
export function normalizeEmail(email: string): string | undefined {
  const trimmed = email.trim().toLowerCase();
  const at = trimmed.lastIndexOf('@');
  if (at <= 0 || at === trimmed.length - 1) return undefined;
  let local = trimmed.slice(0, at);
  let domain = trimmed.slice(at + 1);
  const plus = local.indexOf('+');
  if (plus >= 0) local = local.slice(0, plus);
  if (gmailDomains.has(domain)) {
    local = local.replaceAll('.', '');
    domain = 'gmail.com';
  }
  return local === '' ? undefined : `${local}@${domain}`;
}

interface Claim {
  kind: ClaimKind;
  hash: string;
}

interface ClaimFacts {
  accountId: string;
  email?: string | null | undefined;
  /** More emails Stripe holds for the buyer (typed into Checkout, a Link account's). */
  otherEmails?: string[] | undefined;
  deviceHash?: string | null | undefined;
  cardFingerprint?: string | undefined;
  /** `{type}:{fingerprint}` of payment methods other than cards. */
  paymentMethodFingerprints?: string[] | undefined;
}

function claimsFor(hasher: ClaimHasher, facts: ClaimFacts): Claim[] {
  const claims: Claim[] = [{ kind: 'account', hash: hasher.hash('account', facts.accountId) }];
  const emails = new Set<string>();
  for (const raw of [facts.email, ...(facts.otherEmails ?? [])]) {
    const email = raw === null || raw === undefined ? undefined : normalizeEmail(raw);
    if (email !== undefined) emails.add(email);
  }
  // Sorted, like every claim list, so that two transactions claiming the same values take them in one order.
  for (const email of [...emails].sort()) claims.push({ kind: 'email', hash: hasher.hash('email', email) });
  if (facts.deviceHash !== null && facts.deviceHash !== undefined) claims.push({ kind: 'device', hash: facts.deviceHash });
  if (facts.cardFingerprint !== undefined) claims.push({ kind: 'card', hash: hasher.hash('card', facts.cardFingerprint) });
  for (const fingerprint of [...new Set(facts.paymentMethodFingerprints ?? [])].sort())
    claims.push({ kind: 'payment_method', hash: hasher.hash('payment_method', fingerprint) });
  return claims;
}

type Queryable = Pick<pg.ClientBase, 'query'>;

/** The first claim already taken, if any (read only; the grant's inserts decide races). */
async function takenClaim(client: Queryable, claims: Claim[]): Promise<ClaimKind | undefined> {
  for (const claim of claims) {
    const { rowCount } = await client.query('select 1 from trial_claims where kind = $1 and value_hash = $2', [claim.kind, claim.hash]);
    if (rowCount !== 0) return claim.kind;
  }
  return undefined;
}

export async function trialEligibility(
  db: Database,
  hasher: ClaimHasher,
  accountId: string,
  reported: { email?: string | undefined; deviceFingerprint?: string | undefined },
) {
  const { rows } = await db.query<{ email: string | null; device_fingerprint_hash: string | null }>(
    'select email, device_fingerprint_hash from accounts where id = $1',
    [accountId],
  );
  const account = rows[0];
  if (account === undefined) throw accountNotFound(accountId);
  const facts = { accountId, email: account.email, deviceHash: account.device_fingerprint_hash };
  const reportedFacts = {
    accountId,
    email: reported.email,
    deviceHash: reported.deviceFingerprint === undefined ? undefined : hasher.hash('device', reported.deviceFingerprint),
  };
  const taken = (await takenClaim(db.pool, claimsFor(hasher, facts))) ?? (await takenClaim(db.pool, claimsFor(hasher, reportedFacts)));
  return taken === undefined ? { eligible: true } : { eligible: false, reason: `${taken}_had_trial` as RefusalReason };
}

export function trialGate(db: Database, hasher: ClaimHasher): TrialGate {
  return {
    async refusal(accountId: string): Promise<string | undefined> {
      const answer = await trialEligibility(db, hasher, accountId, {});
      return answer.eligible ? undefined : answer.reason;
    },
  };
}

/** Called for a subscription event in `trialing` on a plan with a trial, inside the event's transaction. */
export async function considerTrial(
  context: EffectContext,
  hasher: ClaimHasher,
  accountId: string,
  state: SubscriptionState,
  plan: Plan,
): Promise<void> {
  if (plan.trial === undefined) return;
  const granted = await context.client.query('select 1 from grants where account_id = $1 and grant_key = $2', [
    accountId,
    `trial:${accountId}`,
  ]);
  const refused = await context.client.query('select 1 from trial_refusals where subscription_id = $1', [state.id]);
  if (granted.rowCount !== 0 || refused.rowCount !== 0) return;
  await lockAccount(context, accountId);
  const { rows } = await context.client.query<{ email: string | null; device_fingerprint_hash: string | null }>(
    'select email, device_fingerprint_hash from accounts where id = $1',
    [accountId],
  );
  const claims = claimsFor(hasher, {
    accountId,
    email: rows[0]?.email,
    otherEmails: context.prepared.emails,
    deviceHash: rows[0]?.device_fingerprint_hash,
    cardFingerprint: context.prepared.cardFingerprint,
    paymentMethodFingerprints: context.prepared.paymentMethodFingerprints,
  });
  // Claims go in a fixed order, each insert-or-nothing: a racing claim of the same value waits
  // for the other transaction and then finds it taken. A refusal undoes the claims taken here.
  await context.client.query('savepoint trial_claims');
  let conflict: ClaimKind | undefined;
  for (const claim of claims) {
    const inserted = await context.client.query(
      `insert into trial_claims (kind, value_hash, account_id, subscription_id) values ($1, $2, $3, $4) on conflict do nothing`,
      [claim.kind, claim.hash, accountId, state.id],
    );
    if (inserted.rowCount === 0) {
      conflict = claim.kind;
      break;
    }
  }
  if (conflict === undefined) {
    await context.client.query('release savepoint trial_claims');
    const trialEnd = state.trialEnd ?? Math.floor((context.now ?? new Date()).getTime() / 1000) + plan.trial.days * 86400;
    await grantOnce(context, {
      accountId,
      source: 'trial',
      credits: plan.trial.credits,
      expiresAt: new Date(trialEnd * 1000),
      key: `trial:${accountId}`,
      reference: { subscription: state.id, plan: plan.id },
    });
    return;
  }
  await context.client.query('rollback to savepoint trial_claims');
  const reason: RefusalReason = `${conflict}_had_trial`;
  await context.client.query(
    'insert into trial_refusals (subscription_id, account_id, reason) values ($1, $2, $3) on conflict do nothing',
    [state.id, accountId, reason],
  );
  await context.alerts.raise(context.client, {
    kind: 'trial_refused',
    key: `trial_refused:${state.id}`,
    severity: 'warning',
    message: `trial refused for account ${accountId} (${reason}); subscription ${state.id} will be cancelled`,
    details: { subscription: state.id, reason },
    accountId,
  });
}
