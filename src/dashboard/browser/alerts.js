// Alerts: the open ones first (what needs someone now), then the resolved ones.
import { accountHref } from './accounts.js';
import { Badge, credits, html, Id, Loading, Problem, Table, Time, useLoad } from './ui.js';

const limit = 500;

const columns = (resolved) => [
  { label: 'Severity', render: (alert) => html`<${Badge} value=${alert.severity} />` },
  { label: 'Alert', render: (alert) => html`<span class="text">${alert.message}</span><div class="sub">${alert.kind}</div>` },
  {
    label: 'Account',
    render: (alert) =>
      alert.account_id
        ? html`<${Id} value=${alert.account_id} href=${accountHref(alert.account_id)} />`
        : html`<span class="muted">—</span>`,
  },
  { label: 'Times', numeric: true, render: (alert) => credits(alert.count) },
  { label: 'First', render: (alert) => html`<${Time} value=${alert.first_at} />` },
  { label: 'Last', render: (alert) => html`<${Time} value=${alert.last_at} />` },
  ...(resolved ? [{ label: 'Resolved', render: (alert) => html`<${Time} value=${alert.resolved_at} />` }] : []),
];

export function Alerts({ api }) {
  const alerts = useLoad(() => api.get(`/v1/admin/alerts?limit=${limit}`), [api]);
  const all = alerts.data ? alerts.data.alerts : [];
  const open = all.filter((alert) => alert.resolved_at === null);
  const resolved = all.filter((alert) => alert.resolved_at !== null);
  return html`<section aria-labelledby="alerts-title">
    <div class="page-head">
      <h1 id="alerts-title">Alerts</h1>
      <button type="button" onClick=${alerts.reload}>Refresh</button>
    </div>
    <${Problem} error=${alerts.error} doing="load the alerts" retry=${alerts.reload} />
    ${
      alerts.data === undefined
        ? alerts.error
          ? null
          : html`<${Loading} what="the alerts" />`
        : html`<section class="panel" aria-labelledby="open-alerts" id="alerts-open">
          <h2 id="open-alerts">Open</h2>
          <${Table} caption="Open alerts, newest first" hideCaption=${true} columns=${columns(false)} rows=${open} empty="No open alerts: nothing needs attention." rowKey=${(alert) => alert.id} />
        </section>
        <section class="panel" aria-labelledby="resolved-alerts" id="alerts-resolved">
          <h2 id="resolved-alerts">Resolved</h2>
          <${Table} caption="Resolved alerts, newest first" hideCaption=${true} columns=${columns(true)} rows=${resolved} empty="No resolved alerts yet." rowKey=${(alert) => alert.id} />
        </section>
        <p class="muted">The newest ${limit} alerts. Alerts are also sent to the sinks in TALLY_ALERT_WEBHOOK_URLS.</p>`
    }
  </section>`;
}
