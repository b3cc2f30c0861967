import type { SubscriptionState } from '../stripe/shapes.js';
import type { Plan } from './catalog.js';
import type { EffectContext } from './effect-context.js';

/**
 * Trials. A subscription that first enters `trialing` on a plan with a trial may receive the
 * plan's trial credits. The abuse rules (one trial per account, email, device and card) come
 * with the trials feature; until then no trial credits are granted.
 */
export async function considerTrial(_context: EffectContext, _accountId: string, _state: SubscriptionState, _plan: Plan): Promise<void> {
  // Intentionally no grant yet: granting trial credits without the one-trial-per-person
  // claims would open exactly the abuse this product exists to stop.
}

/** Who may start a trial. */
export function trialGate(db: import('../db/database.js').Database): import('./checkout.js').TrialGate {
  return {
    async refusal(accountId: string): Promise<string | undefined> {
      const { rowCount } = await db.query(`select 1 from grants where account_id = $1 and source = 'trial' limit 1`, [accountId]);
      return rowCount === 0 ? undefined : 'account_had_trial';
    },
  };
}
