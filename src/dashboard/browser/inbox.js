// The webhook inbox: Stripe's events as Tally stored them, filtered by status and type; one
// event with its payload and where its attempts stand; replay (admin key only).
import { useEffect, useState } from './vendor/hooks.js';
import { path, query } from './api.js';
import { ReplayButton } from './actions.js';
import { accountHref } from './accounts.js';
import { Badge, html, Id, Json, Loading, navigate, Problem, Table, Time, useLoad } from './ui.js';

const statuses = [
  ['', 'Any status'],
  ['failed', 'Failed: gave up after retries, needs a replay'],
  ['pending', 'Pending: waiting or retrying'],
  ['processed', 'Processed: applied'],
  ['ignored', "Ignored: not Tally's, or no effect"],
];
const limit = 100;

export function Inbox({ api, canAct, params }) {
  const status = params.get('status') || '';
  const type = params.get('type') || '';
  const [typed, setTyped] = useState(type);
  const [notice, setNotice] = useState('');
  const events = useLoad(() => api.get(`/v1/admin/webhook-events${query({ status, type, limit })}`), [api, status, type]);
  // The type box suggests every type seen on this page so far.
  const [types, setTypes] = useState([]);
  useEffect(() => {
    if (events.data) setTypes((known) => [...new Set([...known, ...events.data.events.map((event) => event.type)])].sort());
  }, [events.data]);
  const go = (changes) => navigate(`#/inbox${query({ status, type, ...changes })}`, true);
  const columns = [
    { label: 'Received', render: (event) => html`<${Time} value=${event.received_at} />` },
    { label: 'Event', render: (event) => html`<${Id} value=${event.id} href=${`#/inbox/${encodeURIComponent(event.id)}`} />` },
    { label: 'Type', render: (event) => event.type },
    { label: 'Status', render: (event) => html`<${Badge} value=${event.status} />` },
    { label: 'Attempts', numeric: true, render: (event) => String(event.attempts) },
    {
      label: 'Account',
      render: (event) =>
        event.account_id
          ? html`<${Id} value=${event.account_id} href=${accountHref(event.account_id)} />`
          : html`<span class="muted">—</span>`,
    },
    {
      label: 'Why',
      render: (event) =>
        event.last_error || event.ignored_reason
          ? html`<span class="text">${event.last_error || event.ignored_reason}</span>`
          : html`<span class="muted">—</span>`,
    },
  ];
  if (canAct)
    columns.push({
      label: 'Action',
      render: (event) =>
        html`<${ReplayButton} api=${api} eventId=${event.id} onDone=${(words) => {
          setNotice(words);
          events.reload();
        }} />`,
    });
  const filtered = status !== '' || type !== '';
  return html`<section aria-labelledby="inbox-title">
    <div class="page-head">
      <h1 id="inbox-title">Webhook inbox</h1>
      <button type="button" onClick=${events.reload}>Refresh</button>
    </div>
    <form class="filters" onSubmit=${(event) => {
      event.preventDefault();
      go({ type: typed.trim() });
    }}>
      <div class="row">
        <div class="field">
          <label for="inbox-status">Status</label>
          <select id="inbox-status" value=${status} onChange=${(event) => go({ status: event.currentTarget.value })}>
            ${statuses.map(([value, label]) => html`<option value=${value}>${label}</option>`)}
          </select>
        </div>
        <div class="field">
          <label for="inbox-type">Event type (exact, as invoice.paid)</label>
          <input id="inbox-type" list="inbox-types" autocomplete="off" spellcheck="false" value=${typed} onInput=${(event) => setTyped(event.currentTarget.value)} />
          <datalist id="inbox-types">${types.map((name) => html`<option value=${name} />`)}</datalist>
        </div>
        <button type="submit">Filter</button>
        ${
          filtered
            ? html`<button type="button" onClick=${() => {
                setTyped('');
                go({ status: '', type: '' });
              }}>Clear filters</button>`
            : null
        }
      </div>
    </form>
    ${notice ? html`<p class="done" role="status" id="inbox-notice">${notice}</p>` : null}
    <${Problem} error=${events.error} doing="load the webhook inbox" retry=${events.reload} />
    ${
      events.data === undefined && !events.error
        ? html`<${Loading} what="the inbox" />`
        : html`<div id="inbox">
          <${Table}
            caption=${`The newest ${limit} events${filtered ? ' matching the filters' : ''}, newest first`}
            columns=${columns}
            rows=${events.data ? events.data.events : []}
            empty=${filtered ? 'No stored event matches these filters. Clear them to see every event.' : 'No Stripe event has arrived yet. Point a Stripe webhook endpoint at /webhooks/stripe (see the README).'}
            rowKey=${(event) => event.id}
          />
        </div>`
    }
  </section>`;
}

export function InboxEvent({ api, eventId, canAct }) {
  const event = useLoad(() => api.get(path('/v1/admin/webhook-events', eventId)), [api, eventId]);
  const data = event.data;
  return html`<section aria-labelledby="event-title">
    <div class="page-head">
      <h1 id="event-title">Stripe event <span class="account-id">${eventId}</span></h1>
      <button type="button" onClick=${event.reload}>Refresh</button>
    </div>
    <p><a href="#/inbox">← Webhook inbox</a></p>
    <${Problem} error=${event.error} doing="load the event" retry=${event.reload} />
    ${
      data
        ? html`<section class="panel" aria-labelledby="event-state">
          <h2 id="event-state">Where it stands</h2>
          <dl class="facts">
            <dt>Type</dt><dd>${data.type}</dd>
            <dt>Status</dt><dd><${Badge} value=${data.status} /></dd>
            <dt>Attempts</dt><dd>${data.attempts}${data.status === 'pending' ? html`, next at <${Time} value=${data.next_attempt_at} />` : null}</dd>
            <dt>Last error</dt><dd class="text">${data.last_error || '—'}</dd>
            ${data.ignored_reason ? html`<dt>Ignored because</dt><dd class="text">${data.ignored_reason}</dd>` : null}
            <dt>Account</dt><dd>${data.account_id ? html`<${Id} value=${data.account_id} href=${accountHref(data.account_id)} />` : '—'}</dd>
            <dt>Created at Stripe</dt><dd><${Time} value=${data.created} /></dd>
            <dt>Received</dt><dd><${Time} value=${data.received_at} /></dd>
            <dt>Processed</dt><dd><${Time} value=${data.processed_at} empty="not yet" /></dd>
            <dt>API version</dt><dd>${data.api_version || '—'}</dd>
          </dl>
          ${canAct ? html`<${ReplayButton} api=${api} eventId=${data.id} onDone=${event.reload} />` : null}
        </section>
        <section class="panel" aria-labelledby="event-payload">
          <h2 id="event-payload">Payload</h2>
          ${
            data.payload === null
              ? html`<p class="empty-note" id="payload-hidden">The payload is not shown to the viewer key: Stripe's objects carry emails, names and billing addresses. The admin key shows it.</p>`
              : html`<${Json} value=${data.payload} />`
          }
        </section>`
        : event.error
          ? null
          : html`<${Loading} what="the event" />`
    }
  </section>`;
}
