import { findPrice, type Catalog } from '../billing/catalog.js';
import { verifyClientReference } from '../billing/client-reference.js';
import type { Prepared, Provenance, StoredEvent, StripeObject } from '../billing/effect-context.js';
import { RetryLater } from '../billing/effect-context.js';
import { packsBought } from '../billing/payments.js';
import type { ClaimHasher } from '../billing/claim-hasher.js';
import type { Database } from '../db/database.js';
import type { StripeGateway } from '../stripe/gateway.js';
import {
  accountMetadataKey,
  idOf,
  invoiceAccountHint,
  invoiceLines,
  invoiceSubscriptionId,
  readPath,
  readText,
  subscriptionState,
} from '../stripe/shapes.js';

/**
 * What an event needs from the Stripe API, fetched before its transaction opens so that no
 * lock is held across a network call: the payment intent behind a charge, refund or dispute,
 * the invoice a payment intent paid, the refunds of a charge, an invoice's lines and its
 * subscription's trial end, a checkout's line items, and where an object came from when its
 * event does not say whose it is.
 */
export interface PrepareDependencies {
  db: Database;
  gateway: StripeGateway | undefined;
  hasher: ClaimHasher;
  catalog: Catalog;
}

const paymentEventTypes = new Set([
  'charge.refunded',
  'refund.created',
  'refund.updated',
  'charge.dispute.created',
  'charge.dispute.updated',
  'charge.dispute.funds_withdrawn',
  'charge.dispute.closed',
]);

const subscriptionEventTypes = new Set(['customer.subscription.created', 'customer.subscription.updated']);

/**
 * What a trial claims besides the account: the card fingerprint of the subscription's payment
 * method and the fingerprint of any other kind Stripe gives (bank accounts, SEPA and so on), the
 * email of a Link payment method, and the email typed into the Checkout that started it. Paying
 * with something other than a card must not escape the one-trial rule.
 */
async function prepareTrial(gateway: StripeGateway | undefined, object: StripeObject): Promise<Prepared> {
  if (object.status !== 'trialing') return {};
  const prepared: Prepared = {};
  const method = object.default_payment_method;
  const methodId = idOf(method);
  const expanded = typeof method === 'object' && method !== null ? (method as StripeObject) : undefined;
  if (expanded !== undefined || methodId !== undefined) {
    if (expanded === undefined && gateway === undefined)
      throw new RetryLater(`the payment method ${methodId ?? '?'} needs the Stripe API, and STRIPE_SECRET_KEY is not set`);
    const paymentMethod = expanded ?? ((await gateway?.retrievePaymentMethod(methodId ?? '')) as unknown as StripeObject | undefined) ?? {};
    Object.assign(prepared, paymentMethodFacts(paymentMethod));
  }
  const subscriptionId = idOf(object.id);
  if (gateway !== undefined && subscriptionId !== undefined) {
    const session = await gateway.checkoutSessionOf({ subscription: subscriptionId });
    const email = readText(readPath(session, 'customer_details', 'email'));
    if (email !== undefined) prepared.emails = [...(prepared.emails ?? []), email];
  }
  return prepared;
}

function paymentMethodFacts(paymentMethod: StripeObject): Prepared {
  const facts: Prepared = {};
  const card = readText(readPath(paymentMethod, 'card', 'fingerprint'));
  if (card !== undefined) facts.cardFingerprint = card;
  const type = readText(paymentMethod.type);
  const other = type === undefined || type === 'card' ? undefined : readText(readPath(paymentMethod, type, 'fingerprint'));
  if (type !== undefined && other !== undefined) facts.paymentMethodFingerprints = [`${type}:${other}`];
  const linkEmail = readText(readPath(paymentMethod, 'link', 'email'));
  if (linkEmail !== undefined) facts.emails = [linkEmail];
  return facts;
}

const paidInvoiceTypes = new Set(['invoice.paid', 'invoice.payment_succeeded']);

/**
 * What a paid invoice needs: all its lines when its event listed only the first ones, and,
 * when a plan line costs nothing, the end of its subscription's trial. Stripe bills a trial as
 * a $0 invoice whose line covers the trial; the trial rule grants that period, not the invoice.
 */
async function prepareInvoice(db: Database, gateway: StripeGateway | undefined, invoice: StripeObject): Promise<Prepared> {
  const invoiceId = idOf(invoice.id);
  const prepared: Prepared = {};
  if (readPath(invoice, 'lines', 'has_more') === true && invoiceId !== undefined) {
    if (gateway === undefined)
      throw new RetryLater(`the lines of invoice ${invoiceId} need the Stripe API, and STRIPE_SECRET_KEY is not set`);
    const lines = await gateway.call('invoices.listLineItems', (stripe) =>
      stripe.invoices.listLineItems(invoiceId, { limit: 100 }).autoPagingToArray({ limit: 10_000 }),
    );
    prepared.invoiceLines = lines as unknown as StripeObject[];
  }
  const complete = prepared.invoiceLines === undefined ? invoice : { ...invoice, lines: { data: prepared.invoiceLines } };
  const subscriptionId = invoiceSubscriptionId(invoice);
  if (subscriptionId !== undefined && invoiceLines(complete).some((line) => line.amount === 0 && !line.proration)) {
    prepared.trialEnd = await subscriptionTrialEnd(db, gateway, subscriptionId);
  }
  return prepared;
}

/** A subscription's trial end (null: no trial), from its mirror once a subscription event was applied, else from Stripe. */
async function subscriptionTrialEnd(db: Database, gateway: StripeGateway | undefined, subscriptionId: string): Promise<number | null> {
  const { rows } = await db.query<{ trial_end: number | null }>(
    'select extract(epoch from trial_end)::bigint as trial_end from subscriptions where id = $1',
    [subscriptionId],
  );
  if (rows[0] !== undefined) return rows[0].trial_end;
  // Without the API, the subscription's own event (always sent) tells; until then, wait.
  if (gateway === undefined)
    throw new RetryLater(`whether a $0 line of ${subscriptionId} is its trial needs its subscription event or the Stripe API`);
  const subscription = await gateway.call('subscriptions.retrieve', (stripe) => stripe.subscriptions.retrieve(subscriptionId));
  return subscription.trial_end ?? null;
}

/**
 * Where a subscription or invoice came from, asked of the API only when the event itself
 * attributes nothing (no Tally metadata naming an account, no linked customer, no mirrored
 * subscription): the metadata and client reference of the Checkout Session that created it.
 * Without the API the event waits (RetryLater in the effect): it may yet be Tally's.
 */
async function prepareProvenance(
  dependencies: PrepareDependencies,
  facts: { accountHint: string | undefined; customerId: string | undefined; subscriptionId: string | undefined },
): Promise<Provenance | undefined> {
  const { db, gateway } = dependencies;
  if (gateway === undefined || facts.subscriptionId === undefined) return undefined;
  const { rows } = await db.query<{ known: boolean }>(
    `select exists (select 1 from accounts where id = $1)
         or exists (select 1 from accounts where stripe_customer_id = $2)
         or exists (select 1 from subscriptions where id = $3) as known`,
    [facts.accountHint ?? null, facts.customerId ?? null, facts.subscriptionId],
  );
  if (rows[0]?.known === true) return undefined;
  const session = await gateway.checkoutSessionOf({ subscription: facts.subscriptionId });
  return {
    accountHint: readText(readPath(session, 'metadata', accountMetadataKey)),
    clientReference: readText(session?.client_reference_id),
  };
}

/** A paid payment-mode session's line items, when its event did not carry them (it never does). */
async function prepareCheckout(gateway: StripeGateway | undefined, event: StoredEvent): Promise<Prepared> {
  const session = event.object;
  const paid = session.payment_status === 'paid' || event.type === 'checkout.session.async_payment_succeeded';
  const carried = Array.isArray(readPath(session, 'line_items', 'data')) && readPath(session, 'line_items', 'has_more') !== true;
  const sessionId = idOf(session.id);
  if (session.mode !== 'payment' || !paid || carried || sessionId === undefined) return {};
  if (gateway === undefined)
    throw new RetryLater(`the line items of checkout session ${sessionId} need the Stripe API, and STRIPE_SECRET_KEY is not set`);
  return { lineItems: (await gateway.checkoutLineItems(sessionId)) as unknown as StripeObject[] };
}

/**
 * For a refund or dispute of a payment Tally has not recorded: is the payment Tally's (it bought
 * credits for an account, so the refund waits for its grant) or foreign (ignored at once)?
 * Undefined when Stripe does not know the payment intent: nothing to decide on, so it waits.
 */
async function paymentOwner(
  dependencies: PrepareDependencies,
  gateway: StripeGateway,
  paymentIntent: string,
  invoiceId: string | undefined,
): Promise<Prepared['paymentOwner']> {
  const { db, hasher, catalog } = dependencies;
  const intent = await gateway.retrievePaymentIntent(paymentIntent);
  if (intent === undefined) return undefined;
  if (readText(intent.metadata?.[accountMetadataKey]) !== undefined) return 'tally';
  const linked = async (customerId: string | undefined) =>
    customerId !== undefined && (await db.query('select 1 from accounts where stripe_customer_id = $1', [customerId])).rowCount !== 0;
  const session = await gateway.checkoutSessionOf({ payment_intent: paymentIntent });
  if (session !== undefined) {
    const bought = packsBought(catalog, (await gateway.checkoutLineItems(session.id)) as unknown as StripeObject[]);
    if (bought.credits === 0) return { foreign: 'bought no credit pack' };
    const attributed =
      readText(session.metadata?.[accountMetadataKey]) !== undefined ||
      verifyClientReference(hasher, readText(session.client_reference_id)) !== undefined ||
      (await linked(idOf(session.customer)));
    return attributed ? 'tally' : { foreign: 'was never attributed to an account' };
  }
  if (invoiceId !== undefined) {
    const invoice = (await gateway.retrieveInvoice(invoiceId)) as unknown as StripeObject;
    const plans = invoiceLines(invoice).some((line) => line.priceId !== undefined && findPrice(catalog, line.priceId)?.kind === 'plan');
    if (!plans) return { foreign: `paid invoice ${invoiceId}, which bills no plan of the catalog` };
    const subscriptionId = invoiceSubscriptionId(invoice);
    const mirrored =
      subscriptionId !== undefined && (await db.query('select 1 from subscriptions where id = $1', [subscriptionId])).rowCount !== 0;
    return invoiceAccountHint(invoice) !== undefined || mirrored || (await linked(idOf(invoice.customer)))
      ? 'tally'
      : { foreign: `paid invoice ${invoiceId}, never attributed to an account` };
  }
  return { foreign: 'is neither a credit pack nor a plan invoice' };
}

export async function prepareEvent(dependencies: PrepareDependencies, event: StoredEvent): Promise<Prepared> {
  const { db, gateway } = dependencies;
  const object = event.object;
  if (subscriptionEventTypes.has(event.type) || event.type === 'customer.subscription.deleted') {
    const state = subscriptionState(object);
    const prepared = event.type === 'customer.subscription.deleted' ? {} : await prepareTrial(gateway, object);
    const provenance = await prepareProvenance(dependencies, {
      accountHint: state?.accountHint,
      customerId: state?.customerId,
      subscriptionId: state?.id,
    });
    return provenance === undefined ? prepared : { ...prepared, provenance };
  }
  if (paidInvoiceTypes.has(event.type) || event.type === 'invoice.payment_failed') {
    const prepared = paidInvoiceTypes.has(event.type) ? await prepareInvoice(db, gateway, object) : {};
    const provenance = await prepareProvenance(dependencies, {
      accountHint: invoiceAccountHint(object),
      customerId: idOf(object.customer),
      subscriptionId: invoiceSubscriptionId(object),
    });
    return provenance === undefined ? prepared : { ...prepared, provenance };
  }
  if (event.type === 'checkout.session.completed' || event.type === 'checkout.session.async_payment_succeeded')
    return prepareCheckout(gateway, event);
  if (!paymentEventTypes.has(event.type)) return {};
  const prepared: Prepared = {};
  const needGateway = (what: string): StripeGateway => {
    if (gateway === undefined) throw new RetryLater(`${what} needs the Stripe API, and STRIPE_SECRET_KEY is not set`);
    return gateway;
  };
  let paymentIntent = idOf(object.payment_intent);
  if (paymentIntent === undefined) {
    const chargeId = event.type === 'charge.refunded' ? idOf(object.id) : idOf(object.charge);
    if (chargeId === undefined) return prepared;
    const charge = await needGateway(`the payment intent of charge ${chargeId}`).retrieveCharge(chargeId);
    paymentIntent = idOf(charge.payment_intent);
    if (paymentIntent !== undefined) prepared.paymentIntent = paymentIntent;
  }
  if (paymentIntent === undefined) return prepared;
  const known = await db.query(
    'select 1 from payments where payment_intent = $1 union all select 1 from invoice_payment_intents i join payments p on p.invoice_id = i.invoice_id where i.payment_intent = $1',
    [paymentIntent],
  );
  if (known.rowCount === 0 && gateway !== undefined) {
    const invoiceId = await gateway.invoiceOfPaymentIntent(paymentIntent);
    if (invoiceId !== undefined) prepared.invoiceId = invoiceId;
    const knownInvoice =
      invoiceId !== undefined && (await db.query('select 1 from payments where invoice_id = $1', [invoiceId])).rowCount !== 0;
    if (!knownInvoice) {
      const owner = await paymentOwner(dependencies, gateway, paymentIntent, invoiceId);
      if (owner !== undefined) prepared.paymentOwner = owner;
    }
  }
  if (event.type === 'charge.refunded' && !Array.isArray(readPath(object, 'refunds', 'data'))) {
    const chargeId = idOf(object.id) ?? '';
    const refunds = await needGateway(`the refunds of charge ${chargeId}`).call('refunds.list', (stripe) =>
      stripe.refunds.list({ charge: chargeId, limit: 100 }).autoPagingToArray({ limit: 10_000 }),
    );
    prepared.refunds = refunds as unknown as StripeObject[];
  }
  return prepared;
}
