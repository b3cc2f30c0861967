// The dashboard's entry: the log-in, the page frame (navigation, who is logged in, log-out) and
// the hash routes of its pages. The key is kept in this tab's sessionStorage only: it survives
// a reload, is gone when the tab closes or on log-out, and is never sent anywhere but Tally's API.
import { render } from './vendor/preact.js';
import { useEffect, useMemo, useState } from './vendor/hooks.js';
import { createApi, describeError, describeLoginError, ApiError } from './api.js';
import { html } from './ui.js';
import { Overview } from './overview.js';
import { Accounts } from './accounts.js';
import { Account } from './account.js';
import { Inbox, InboxEvent } from './inbox.js';
import { Alerts } from './alerts.js';
import { Reconciliation, Entry } from './reconciliation.js';
import { RateCards } from './ratecards.js';

const storageKey = 'tally-dashboard-key';

const pages = [
  { path: 'overview', label: 'Overview' },
  { path: 'accounts', label: 'Accounts' },
  { path: 'rate-cards', label: 'Rate cards' },
  { path: 'inbox', label: 'Webhook inbox' },
  { path: 'alerts', label: 'Alerts' },
  { path: 'reconciliation', label: 'Reconciliation' },
];

/** The route in the address's hash: "#/accounts/acme?tab=ledger" → {segments, params}. */
function parseHash(hash) {
  const [pathPart, queryPart] = hash.replace(/^#\/?/, '').split('?');
  const segments = (pathPart || 'overview')
    .split('/')
    .filter(Boolean)
    .map((segment) => decodeURIComponent(segment));
  return { segments, params: new URLSearchParams(queryPart || '') };
}

function useRoute() {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(location.hash));
    addEventListener('hashchange', changed);
    return () => removeEventListener('hashchange', changed);
  }, []);
  return route;
}

function Login({ notice, onLogin }) {
  const [key, setKey] = useState('');
  const [error, setError] = useState(notice || '');
  const [busy, setBusy] = useState(false);
  const submit = async (event) => {
    event.preventDefault();
    const typed = key.trim();
    if (typed === '') {
      setError('Paste the admin key or the viewer key first.');
      return;
    }
    setBusy(true);
    try {
      const caller = await createApi(typed).get('/v1/admin/caller');
      onLogin(typed, caller);
    } catch (failure) {
      setError(describeLoginError(failure));
    } finally {
      setBusy(false);
    }
  };
  return html`<main class="login" id="main">
    <h1>Tally dashboard</h1>
    <p class="session-state" data-session="out">You are logged out.</p>
    <form id="login-form" onSubmit=${submit}>
      <label for="key">Admin key or viewer key</label>
      <input id="key" name="key" type="password" autocomplete="off" spellcheck="false" value=${key} onInput=${(event) => setKey(event.currentTarget.value)} />
      <button type="submit" disabled=${busy}>${busy ? 'Checking the key…' : 'Log in'}</button>
    </form>
    ${error ? html`<p class="problem" role="alert" id="login-error">${error}</p>` : null}
    <p class="muted">The viewer key shows everything and changes nothing. The key is kept in this browser tab only (sessionStorage), until you log out or close the tab.</p>
  </main>`;
}

function Frame({ session, onLogout, children, current }) {
  return html`<div class="frame">
    <a class="skip" href="#main" onClick=${(event) => {
      event.preventDefault();
      document.getElementById('main')?.focus();
    }}>Skip to the page</a>
    <header class="top">
      <a class="brand" href="#/overview">Tally</a>
      <nav aria-label="Pages"><ul>
        ${pages.map((page) => html`<li><a href=${`#/${page.path}`} aria-current=${current === page.path ? 'page' : undefined}>${page.label}</a></li>`)}
      </ul></nav>
      <div class="session">
        <span class="session-state" data-session="in" data-role=${session.role}>
          ${session.role === 'admin' ? 'Logged in with the admin key' : 'Logged in with the viewer key (read only)'}
        </span>
        <button type="button" id="logout" onClick=${onLogout}>Log out</button>
      </div>
    </header>
    <main id="main" tabindex="-1">${children}</main>
  </div>`;
}

function Page({ route, api, session }) {
  const [first, second] = route.segments;
  const canAct = session.role === 'admin';
  const props = { api, canAct, stripeConfigured: session.stripeConfigured, params: route.params };
  if (first === 'accounts' && second !== undefined) return html`<${Account} key=${second} accountId=${second} ...${props} />`;
  if (first === 'accounts') return html`<${Accounts} ...${props} />`;
  if (first === 'inbox' && second !== undefined) return html`<${InboxEvent} key=${second} eventId=${second} ...${props} />`;
  if (first === 'inbox') return html`<${Inbox} ...${props} />`;
  if (first === 'rate-cards') return html`<${RateCards} ...${props} />`;
  if (first === 'alerts') return html`<${Alerts} ...${props} />`;
  if (first === 'reconciliation') return html`<${Reconciliation} ...${props} />`;
  if (first === 'entries' && second !== undefined) return html`<${Entry} key=${second} entryId=${second} ...${props} />`;
  if (first === 'overview') return html`<${Overview} ...${props} />`;
  return html`<h1>No such page</h1><p>There is no page at this address. <a href="#/overview">Go to the overview.</a></p>`;
}

/**
 * @typedef {{ status: 'checking' | 'in' | 'out' | 'unreachable', key?: string, role?: string, stripeConfigured?: boolean, notice?: string }} Session
 */

function App() {
  const [session, setSession] = useState(
    /** @returns {Session} */ () => {
      const key = sessionStorage.getItem(storageKey);
      return key ? { status: 'checking', key } : { status: 'out' };
    },
  );
  const route = useRoute();
  const api = useMemo(() => (session.key ? createApi(session.key) : null), [session.key]);

  // After a reload the saved key is checked again: it may have been rotated meanwhile.
  useEffect(() => {
    if (session.status !== 'checking') return;
    createApi(session.key)
      .get('/v1/admin/caller')
      .then(
        (caller) => setSession({ status: 'in', key: session.key, role: caller.role, stripeConfigured: caller.stripe_configured }),
        (error) => {
          if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
            sessionStorage.removeItem(storageKey);
            setSession({
              status: 'out',
              notice: 'The key saved in this tab is no longer accepted (it may have been changed). Log in with the current key.',
            });
          } else {
            setSession({ status: 'unreachable', key: session.key, notice: describeError(error, 'check your key') });
          }
        },
      );
  }, [session.status]);

  // A new page moves keyboard focus to its content, as a page load would.
  useEffect(() => {
    if (session.status === 'in') document.getElementById('main')?.focus({ preventScroll: true });
  }, [route.segments.join('/')]);

  const login = (key, caller) => {
    sessionStorage.setItem(storageKey, key);
    setSession({ status: 'in', key, role: caller.role, stripeConfigured: caller.stripe_configured });
  };
  const logout = () => {
    sessionStorage.removeItem(storageKey);
    setSession({ status: 'out', notice: '' });
  };

  if (session.status === 'checking')
    return html`<main class="login" id="main"><p class="session-state" data-session="checking" role="status">Checking the key saved in this tab…</p></main>`;
  if (session.status === 'unreachable') {
    return html`<main class="login" id="main">
      <p class="problem" role="alert">${session.notice}</p>
      <button type="button" onClick=${() => setSession({ status: 'checking', key: session.key })}>Try again</button>
      <button type="button" id="logout" onClick=${logout}>Log out</button>
    </main>`;
  }
  if (session.status === 'out') return html`<${Login} notice=${session.notice} onLogin=${login} />`;
  return html`<${Frame} session=${session} onLogout=${logout} current=${route.segments[0]}>
    <${Page} route=${route} api=${api} session=${session} />
  </${Frame}>`;
}

// The loading note the page was served with gives way to the dashboard.
const root = document.getElementById('root');
root.textContent = '';
render(html`<${App} />`, root);
