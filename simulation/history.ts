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
  | { kind: 'dispute'; at: number; dispute: string; paymentIntent: string }
  | { kind: 'dispute_won'; at: number; dispute: string }
  | { kind: 'usage'; at: number; account: string; amount: number; key: string }
  | { kind: 'batch'; at: number; events: { account: string; amount: number; key: string }[] }
  | { kind: 'hold'; at: number; account: string; amount: number; key: string; expiresInSeconds: number }
  | { kind: 'capture'; at: number; hold: string; amount: number }
  | { kind: 'void'; at: number; hold: string };

/** The status (and the available credits, when Tally answers them) of one app call. */
export interface Answer {
  status: number;
  available?: number;
}
