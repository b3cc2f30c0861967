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
  | { kind: 'usage'; at: number; account: string; amount: number; key: string }
  | { kind: 'batch'; at: number; events: { account: string; amount: number; key: string }[] }
  | { kind: 'hold'; at: number; account: string; amount: number; key: string; expiresInSeconds: number }
  | { kind: 'capture'; at: number; hold: string; amount: number }
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

/** The status (and the available credits, when Tally answers them) of one app call. */
export interface Answer {
  status: number;
  /** The error code of a refusal, where the model tells refusals apart (402 for the balance or a limit). */
  code?: string;
  available?: number;
}
