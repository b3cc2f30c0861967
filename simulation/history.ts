/**
 * What the simulator records while it runs: the Stripe history its fake Stripe produced (what
 * was paid, refunded, disputed, started and cancelled, and when) and the app's calls with the
 * answers Tally gave. The reference model (model.ts) reads this and nothing else.
 */
export interface Period {
  start: number;
  end: number;
}

/** An invoice line as Stripe bills it; `billingPeriod` is the subscription period it falls in. */
export interface PaidLine {
  id: string;
  /** The subscription and item the line bills (its own, which may not be the invoice's). */
  subscription: string;
  item: string;
  price: string;
  quantity: number;
  start: number;
  end: number;
  proration: boolean;
  amount: number;
  billingPeriod: Period;
}

export type Fact =
  /** The clock reached `at` and every event before it was applied (the world quiesced). */
  | { kind: 'clock'; at: number }
  | {
      kind: 'invoice_paid';
      at: number;
      account: string;
      subscription: string;
      invoice: string;
      paymentIntent: string | null;
      amountPaid: number;
      /** The invoice's total before the customer's Stripe balance was applied. */
      total: number;
      lines: PaidLine[];
      currentPeriod: Period;
    }
  | { kind: 'trial_started'; at: number; account: string; subscription: string; price: string; trialEnd: number }
  | { kind: 'subscription_ended'; at: number; subscription: string }
  | {
      kind: 'pack_paid';
      at: number;
      account: string;
      paymentIntent: string;
      amountPaid: number;
      items: { price: string; quantity: number }[];
    }
  | { kind: 'refund'; at: number; refund: string; paymentIntent: string; amount: number }
  | { kind: 'refund_reversed'; at: number; refund: string }
  | { kind: 'dispute'; at: number; dispute: string; paymentIntent: string; amount: number }
  | { kind: 'dispute_won'; at: number; dispute: string }
  /** A spend of `amount` credits, or, with `priced`, of what its meter's quantities cost. */
  | { kind: 'usage'; at: number; account: string; amount: number; key: string; priced?: PricedSpend; subscription?: StripeSubscription }
  | {
      kind: 'batch';
      at: number;
      events: { account: string; amount: number; key: string; priced?: PricedSpend; subscription?: StripeSubscription }[];
    }
  | {
      kind: 'hold';
      at: number;
      account: string;
      amount: number;
      key: string;
      expiresInSeconds: number;
      priced?: PricedSpend;
      subscription?: StripeSubscription;
    }
  /** The app read the account's balance (GET /balance). */
  | { kind: 'balance_read'; at: number; account: string; subscription: StripeSubscription }
  /** A capture of `amount` credits, or of a priced hold by the `quantities` the call used. */
  | { kind: 'capture'; at: number; hold: string; amount: number; quantities?: Record<string, number> }
  /** The app asked what a spend would charge now (POST /quote); `key` names its answer. */
  | { kind: 'quote'; at: number; account: string; key: string; amount: number; priced?: PricedSpend; subscription?: StripeSubscription }
  /** An operator published a rate card version (answered 200); `key` names its answer. */
  | { kind: 'rate_card'; at: number; key: string; card: string; rates: Rates; effectiveAt: number }
  | { kind: 'void'; at: number; hold: string }
  /** The app set spend limits (answered 200); `null` removes one. */
  | { kind: 'limits'; at: number; account: string; perDay: number | null; perMonth: number | null }
  /** An operator's grant (admin key); `expiresAt` null never expires. */
  | { kind: 'admin_grant'; at: number; account: string; key: string; amount: number; expiresAt: number | null; priority: number }
  /** An operator's signed adjustment (admin key). */
  | { kind: 'adjustment'; at: number; account: string; key: string; amount: number }
  /** The app saved auto top-up settings (answered 200). */
  | { kind: 'auto_top_up'; at: number; account: string; enabled: boolean; threshold: number; pack: string; maxPerMonth: number }
  /** Stripe created a PaymentIntent under an idempotency key (a key it had forgotten, or never seen). */
  | { kind: 'payment_intent_created'; at: number; account: string; key: string; paymentIntent: string; amount: number }
  /** A PaymentIntent resolved: paid, or failed (declined, needs the customer, a late bank failure). */
  | { kind: 'payment_intent_resolved'; at: number; paymentIntent: string; outcome: 'succeeded' | 'failed' };

export type Rates = Record<string, Record<string, string>>;

/**
 * A priced spend: its meter and quantities, and the account's subscription as Stripe has it when
 * the call is made (its plan prices and status; null with none), from which the model decides
 * the account's plan and so its rate card.
 */
export interface PricedSpend {
  meter: string;
  quantities: Record<string, number>;
  subscription: StripeSubscription;
}
/** The account's live subscription as Stripe has it: its items' prices and seats, its status. */
export type StripeSubscription = { prices: string[]; quantities: number[]; status: string } | null;

/** The status (and the available credits, when Tally answers them) of one app call. */
export interface Answer {
  status: number;
  /** The error code of a refusal, where the model tells refusals apart (402 for the balance or a limit). */
  code?: string;
  available?: number;
  /** A priced call: its exact cost (a decimal string), the card version, the credits charged or held. */
  cost?: string;
  version?: number;
  amount?: number;
  /** A 403 meter_not_entitled: the plan it names. */
  plan?: string;
  /** A quote: whether the spend would pass now. */
  allowed?: boolean;
}
