// Calls to Tally's API with the key the operator gave, and the words an operator reads when
// one fails. The key lives in this tab's sessionStorage (see session.js), never in a cookie,
// never in the page's markup.

/** A refusal or failure from Tally, with the error body's code and details. */
export class ApiError extends Error {
  constructor(status, body, at) {
    const error = body && typeof body === 'object' && body.error ? body.error : {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || (status >= 500 ? 'internal_error' : `http_${status}`);
    this.details = error;
    this.at = at;
  }
}

/** Tally did not answer at all (stopped, unreachable, or the network dropped). */
export class NetworkError extends Error {}

export function createApi(key) {
  async function request(method, path, body) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers:
          body === undefined ? { authorization: `Bearer ${key}` } : { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
      });
    } catch (cause) {
      throw new NetworkError(String(cause?.message ? cause.message : cause));
    }
    let parsed = null;
    const type = response.headers.get('content-type') || '';
    if (type.includes('json')) parsed = await response.json().catch(() => null);
    if (!response.ok) throw new ApiError(response.status, parsed, new Date());
    return parsed;
  }
  return {
    get: (path) => request('GET', path),
    post: (path, body) => request('POST', path, body),
  };
}

/** A query string from the entries whose value is set. */
export function query(values) {
  const parts = Object.entries(values)
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(String(value))}`);
  return parts.length === 0 ? '' : `?${parts.join('&')}`;
}

export const path = (...segments) => segments.map((segment, index) => (index === 0 ? segment : encodeURIComponent(segment))).join('/');

const clock = (date) => `${date.toISOString().slice(11, 19)} UTC`;

/**
 * What went wrong, in words that say what to do next. `doing` completes "could not ...":
 * "load the accounts", "grant the credits".
 */
export function describeError(error, doing) {
  if (error instanceof NetworkError) {
    return `Could not ${doing}: Tally did not answer. Check that Tally is running and reachable from this browser, then try again.`;
  }
  if (!(error instanceof ApiError))
    return `Could not ${doing}: the page failed (${String(error?.message ? error.message : error)}). Reload the page and try again.`;
  const details = error.details;
  switch (error.code) {
    case 'unauthorized':
      return `Could not ${doing}: Tally no longer accepts this key (it may have been changed). Log out, then log in with the current admin or viewer key.`;
    case 'forbidden':
      return `Could not ${doing}: this key may only read. Log out and log in with the admin key to act.`;
    case 'rate_limited':
      return `Could not ${doing}: too many wrong keys were sent from this address. Wait ${details.retry_after_seconds || 60} seconds, then try again.`;
    case 'database_unavailable':
      return `Could not ${doing}: Tally cannot reach its database right now. Check that PostgreSQL is up; Tally reconnects by itself, so try again in a few seconds.`;
    case 'account_not_found':
      return `Could not ${doing}: there is no such account. Find it on the Accounts page by id, email or Stripe customer.`;
    case 'event_not_found':
      return `Could not ${doing}: Tally has no stored Stripe event with this id. Look it up in the webhook inbox.`;
    case 'entry_not_found':
      return `Could not ${doing}: there is no ledger entry with this id.`;
    case 'hold_not_pending':
      return `Could not ${doing}: the hold is already ${details.status || 'resolved'}, so nothing changed. The list below is now up to date.`;
    case 'hold_not_found':
      return `Could not ${doing}: there is no such hold. Reload the account.`;
    case 'insufficient_credits':
      return `Could not ${doing}: the account has only ${details.available ?? 'too few'} credits available. Enter a smaller amount.`;
    case 'adjustment_exceeds_limit':
    case 'grant_exceeds_limit':
      return `Could not ${doing}: the amount is above the limit of ${details.limit ?? 'the catalog'} credits (the plan catalog's limits). Enter a smaller amount, or split it.`;
    case 'balance_limit_exceeded':
      return `Could not ${doing}: the balance would pass the largest amount Tally keeps exactly. Enter a smaller amount.`;
    case 'idempotency_conflict':
      return `Could not ${doing}: this action was already sent with other values. Open the form again to send it as a new action.`;
    case 'invalid_request':
      return `Could not ${doing}: ${error.message}. Correct it and try again.`;
    case 'reconciliation_running':
      return `Could not ${doing}: a reconciliation is already running. Wait for it to finish; its report appears below.`;
    case 'stripe_unavailable':
      return `Could not ${doing}: Stripe cannot be reached (the circuit breaker is open or Stripe timed out). Try again in a minute.`;
    case 'stripe_not_configured':
      return `Could not ${doing}: Stripe is not configured (STRIPE_SECRET_KEY is not set).`;
    case 'stripe_error':
      return `Could not ${doing}: Stripe refused the call. Tally's log at ${clock(error.at)} has Stripe's answer; check the Stripe key and the object in Stripe's dashboard.`;
    case 'internal_error':
      return `Could not ${doing}: Tally failed on the server (at ${clock(error.at)}). Try again; if it fails again, Tally's log has the error at that time, which a developer can use to fix it.`;
    default:
      return `Could not ${doing}: ${error.message} (${error.code}).`;
  }
}

/** Words for a failed log-in, where 401 and 403 mean something else than on a page. */
export function describeLoginError(error) {
  if (error instanceof ApiError && error.code === 'unauthorized') {
    return 'This key was not accepted. Paste the admin key (TALLY_ADMIN_KEY) or the viewer key (TALLY_VIEWER_KEY), which Tally prints when it starts.';
  }
  if (error instanceof ApiError && error.code === 'forbidden') {
    return "This is the app key (TALLY_API_KEY), which stays on your app's servers. Log in with the admin key, or the viewer key to only read.";
  }
  return describeError(error, 'log in');
}
