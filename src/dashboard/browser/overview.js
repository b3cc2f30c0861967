// The overview: what the merchant owes in credits, how credits moved per day, how webhooks are
// flowing, what needs attention (alerts, the breaker, the last reconciliation), and how many
// accounts are on each plan.
import { useEffect, useState } from './vendor/hooks.js';
import { query } from './api.js';
import { RangePicker, TimeChart } from './chart.js';
import { AccountsPerPlan } from './plans.js';
import { Badge, credits, Figure, html, Loading, Problem, Time, useLoad } from './ui.js';

export const creditSeries = [
  { key: 'granted', label: 'Granted', color: '#2563eb' },
  { key: 'spent', label: 'Spent', color: '#d97706' },
  { key: 'expired', label: 'Expired', color: '#6b7280' },
  { key: 'clawed_back', label: 'Clawed back', color: '#dc2626' },
  { key: 'adjusted_down', label: 'Adjusted down', color: '#7c3aed' },
];

const refreshSeconds = 30;

const seconds = (value) =>
  value === null || value === undefined
    ? '—'
    : Number(value) < 1
      ? `${Math.round(Number(value) * 1000)} ms`
      : `${Number(value).toFixed(1)} s`;

function breakerWords(stripe) {
  if (!stripe.configured) return { value: 'not configured', note: 'STRIPE_SECRET_KEY is not set: no Stripe calls are made', tone: 'quiet' };
  const breaker = stripe.breaker;
  if (breaker.state === 'closed') return { value: 'closed', note: 'Stripe calls go through', tone: 'good' };
  if (breaker.state === 'half_open') return { value: 'half open', note: 'trying Stripe again after failures', tone: 'warn' };
  return {
    value: breaker.state.replace(/_/g, ' '),
    note: `${breaker.failures} failures in a row; Stripe calls wait${breaker.opened_at ? ` since ${breaker.opened_at}` : ''}`,
    tone: 'bad',
  };
}

export function Overview({ api }) {
  const [days, setDays] = useState(30);
  const figures = useLoad(() => api.get('/v1/admin/overview'), [api]);
  const history = useLoad(() => api.get(`/v1/admin/credit-totals${query({ days })}`), [api, days]);
  const perPlan = useLoad(() => api.get('/v1/admin/plans'), [api]);
  useEffect(() => {
    const timer = setInterval(() => {
      figures.reload();
      history.reload();
      perPlan.reload();
    }, refreshSeconds * 1000);
    return () => clearInterval(timer);
  }, [figures.reload, history.reload, perPlan.reload]);
  const data = figures.data;
  return html`<section aria-labelledby="overview-title">
    <div class="page-head">
      <h1 id="overview-title">Overview</h1>
      <button type="button" onClick=${() => {
        figures.reload();
        history.reload();
        perPlan.reload();
      }}>Refresh</button>
    </div>
    <${Problem} error=${figures.error} doing="load the overview" retry=${figures.reload} />
    ${data === undefined ? (figures.error ? null : html`<${Loading} what="the overview" />`) : html`<${OverviewFigures} data=${data} />`}
    <section class="panel" aria-labelledby="credits-per-day">
      <div class="panel-head">
        <h2 id="credits-per-day">Credits per day</h2>
        <${RangePicker} name="overview-range" days=${days} onChange=${setDays} />
      </div>
      <${Problem} error=${history.error} doing="load credits per day" retry=${history.reload} />
      ${
        history.data === undefined
          ? history.error
            ? null
            : html`<${Loading} what="the chart" />`
          : html`<${TimeChart} id="credits-chart" title=${`Credits granted, spent, expired, clawed back and adjusted down per day (UTC), last ${days} days`} rows=${history.data.days} series=${creditSeries} />`
      }
    </section>
    <${AccountsPerPlan} perPlan=${perPlan} />
  </section>`;
}

function OverviewFigures({ data }) {
  const breaker = breakerWords(data.stripe);
  const webhooks = data.webhooks;
  const last = data.last_reconciliation;
  return html`<div class="overview-grid">
    <section class="panel" aria-labelledby="liability">
      <h2 id="liability">Credits outstanding</h2>
      <dl class="figures">
        <${Figure} id="outstanding" name="Outstanding" value=${credits(data.credits.outstanding)} note="available plus held: what customers can still spend" />
        <${Figure} id="available" name="Available" value=${credits(data.credits.available)} note=${`across ${credits(data.accounts.count)} accounts`} />
        <${Figure} id="held" name="Held" value=${credits(data.credits.held)} note="reserved by pending holds" />
        <${Figure} id="debt" name="Debt" value=${credits(data.credits.debt)} note=${`${credits(data.accounts.in_debt)} accounts in debt (refunds, disputes)`} tone=${Number(data.credits.debt) > 0 ? 'warn' : undefined} />
      </dl>
    </section>
    <section class="panel" aria-labelledby="webhooks">
      <h2 id="webhooks">Stripe webhooks, last ${webhooks.window_hours} hours</h2>
      <dl class="figures">
        <${Figure} id="webhooks-received" name="Received" value=${credits(webhooks.received)} />
        <${Figure} id="webhooks-processed" name="Processed" value=${credits(webhooks.processed)} />
        <${Figure} id="webhooks-ignored" name="Ignored" value=${credits(webhooks.ignored)} note="not Tally's, or no effect" />
        <${Figure} id="webhooks-failed" name="Failed, all time" value=${html`<a href="#/inbox?status=failed">${credits(webhooks.failed_total)}</a>`} note="need a replay once the cause is fixed" tone=${webhooks.failed_total > 0 ? 'bad' : undefined} />
        <${Figure} id="webhooks-pending" name="Waiting" value=${credits(webhooks.pending_total)} note=${webhooks.oldest_pending_received_at ? html`oldest received <${Time} value=${webhooks.oldest_pending_received_at} />` : 'none waiting'} />
        <${Figure} id="webhooks-lag" name="Lag, median / 95th / max" value=${`${seconds(webhooks.lag_seconds_median)} / ${seconds(webhooks.lag_seconds_95th)} / ${seconds(webhooks.lag_seconds_max)}`} note="from receipt to applied" />
      </dl>
    </section>
    <section class="panel" aria-labelledby="attention">
      <h2 id="attention">Health</h2>
      <dl class="figures">
        <${Figure} id="alerts-open" name="Open alerts" value=${html`<a href="#/alerts">${credits(data.alerts.open)}</a>`} note=${`${credits(data.alerts.open_critical)} critical`} tone=${data.alerts.open_critical > 0 ? 'bad' : data.alerts.open > 0 ? 'warn' : 'good'} />
        <${Figure} id="breaker" name="Stripe breaker" value=${breaker.value} note=${breaker.note} tone=${breaker.tone} />
        <${Figure}
          id="last-reconciliation"
          name="Last reconciliation"
          value=${last ? html`<a href="#/reconciliation"><${Badge} value=${last.status} /> ${last.finding_count === null ? '' : `${last.finding_count} findings`}</a>` : 'never run'}
          note=${last ? html`<${Time} value=${last.finished_at ?? last.started_at} />` : html`<a href="#/reconciliation">run one now</a>`}
          tone=${last && (last.status === 'failed' || last.finding_count > 0) ? 'bad' : undefined}
        />
        <${Figure} id="accounts-flagged" name="Flagged accounts" value=${credits(data.accounts.flagged)} note="disputed payments" />
      </dl>
    </section>
  </div>`;
}
