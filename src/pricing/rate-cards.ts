import { z } from 'zod';
import type { Database } from '../db/database.js';
import { TallyError, invalidRequest } from '../errors.js';
import { type Meter, type Rates, rateIssues, ratesSchema } from './meters.js';

/**
 * Rate cards and their versions, which live in the database (db/functions/45-pricing.sql): the
 * catalog's cards are published at start, an operator publishes later versions, and a spend is
 * priced by the version in effect when its transaction runs. Versions are never edited or
 * deleted, so every charge can be recomputed from the version its entry names.
 */
export interface RateCardVersion {
  id: string;
  version: number;
  effective_at: string;
  rates: Rates;
  published_at: string;
}

/** What pricing needs of the catalog (billing's plan catalog satisfies it). */
export interface PricingCatalog {
  meters: readonly Meter[];
  rate_cards: readonly { id: string; rates: Rates }[];
  default_rate_card?: string | undefined;
  /**
   * Each plan as a spend decides with it in the database: its card, and (billing's catalog has
   * them) whether it is the free plan, its credits per month, entitlements and recurring grants.
   */
  plans: readonly {
    id: string;
    rate_card?: string | undefined;
    free?: boolean | undefined;
    credits_per_month?: number | undefined;
    entitlements?: unknown;
    recurring_grants?: readonly unknown[] | undefined;
  }[];
}

export const publishRateCardInputSchema = z.strictObject({
  rates: ratesSchema,
  /** When the version takes effect: now when left out; more than 60 s in the past is refused. */
  effective_at: z.iso.datetime({ offset: true }).optional(),
});
export type PublishRateCardInput = z.infer<typeof publishRateCardInputSchema>;

export const rateCardNotFound = (cardId: string): TallyError =>
  new TallyError('rate_card_not_found', 404, `no rate card with id ${cardId}`);

export class RateCards {
  constructor(
    private readonly db: Database,
    private readonly meters: readonly Meter[],
    private readonly clock?: () => Date,
  ) {}

  private now(): Date | null {
    return this.clock?.() ?? null;
  }

  /**
   * Brings the database in line with the catalog (at start): a card whose rates differ from the
   * last version the catalog published gets a new version, effective now. Answers the versions
   * published, none when the catalog is unchanged.
   */
  async syncCatalog(catalog: PricingCatalog): Promise<RateCardVersion[]> {
    const cards = catalog.rate_cards.map((card) => ({ id: card.id, rates: card.rates }));
    const plans = catalog.plans.map((plan) => ({
      id: plan.id,
      rate_card: plan.rate_card ?? null,
      free: plan.free === true,
      credits_per_month: plan.credits_per_month ?? 0,
      entitlements: plan.entitlements ?? null,
      recurring_grants: plan.recurring_grants ?? [],
    }));
    return this.db.callJson<RateCardVersion[]>('select tally_sync_catalog_pricing($1, $2, $3, $4) as result', [
      JSON.stringify(cards),
      catalog.default_rate_card ?? null,
      JSON.stringify(plans),
      this.now(),
    ]);
  }

  /** Every card's version in effect now, with the one scheduled next (null when none is). */
  async current(): Promise<{ rate_cards: (RateCardVersion & { next: RateCardVersion | null })[] }> {
    return this.db.callJson('select tally_rate_cards_json($1) as result', [this.now()]);
  }

  /** Every version of a card, newest published first. */
  async versions(cardId: string): Promise<{ versions: RateCardVersion[] }> {
    const versions = await this.db.callJson<{ versions: RateCardVersion[] } | null>('select tally_rate_card_versions_json($1) as result', [
      cardId,
    ]);
    if (versions === null) throw rateCardNotFound(cardId);
    return versions;
  }

  /**
   * Publishes a version an operator wrote. Its rates price exactly the catalog's meters and
   * dimensions (a card prices every dimension of every meter, so a missing rate is an error,
   * never a free dimension).
   */
  async publish(cardId: string, input: PublishRateCardInput): Promise<RateCardVersion> {
    const issue = rateIssues(input.rates, this.meters)[0];
    if (issue !== undefined) throw invalidRequest(['rates', ...issue.path].join('.'), issue.message);
    return this.db.callJson<RateCardVersion>("select tally_publish_rate_card($1, $2, $3, 'admin', $4) as result", [
      cardId,
      JSON.stringify(input.rates),
      input.effective_at === undefined ? null : new Date(input.effective_at),
      this.now(),
    ]);
  }
}
