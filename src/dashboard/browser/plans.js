// Plans on the dashboard: an account's plan and what it may use (its meters, the app's features,
// the rate card that prices its spends, the credits its plan gives each day, week or month) and
// its settings (spend limits, low-balance threshold, auto top-up); and, on the overview, how many
// accounts are on each plan.
import { path } from './api.js';
import { Badge, credits, html, Id, Loading, Problem, Table, Time, useLoad } from './ui.js';

/** Three failed payments in a row turn auto top-up off (SPEC: "Auto top-up"). */
const topUpFailuresInRowMax = 3;

const sourceWords = {
  subscription: { value: 'Subscription', note: 'its subscription is active or past due' },
  trial: { value: 'Trial', note: 'its subscription is in its trial' },
  free: { value: 'Free plan', note: "no live subscription, so the catalog's free plan applies" },
  none: { value: 'No plan', note: 'no live subscription, and the catalog has no free plan' },
};

const cadenceWords = { day: 'every UTC day', week: 'every ISO week (from Monday, UTC)', month: 'every calendar month (UTC)' };

/** A plan as people call it: the catalog's name, with its id beside it. */
function PlanName({ planId, name }) {
  if (planId === null || planId === undefined) return html`<span>No plan</span>`;
  return name
    ? html`<span>${name} <span class="muted">(${planId})</span></span>`
    : html`<span>${planId} <span class="muted">(no longer in the catalog)</span></span>`;
}

/** A feature's value as the app reads it: yes or no, a grouped number, or the text itself. */
function featureValue(value) {
  if (typeof value === 'boolean') return value ? 'yes' : 'no';
  if (typeof value === 'number') return value.toLocaleString('en-US', { maximumFractionDigits: 20 });
  return html`<span class="text">${String(value)}</span>`;
}

const featureColumns = [
  { label: 'Feature', render: (feature) => html`<span class="clip" title=${feature.name}>${feature.name}</span>` },
  { label: 'Value', render: (feature) => featureValue(feature.value) },
];

function PeriodGrant({ grant }) {
  if (grant === null)
    return html`<span class="muted">not given yet: the account's first spend, hold or balance read of the period gives it</span>`;
  return html`<span>${credits(grant.remaining)} of ${credits(grant.amount)} left <${Badge} value=${grant.state} /> <${Id} value=${grant.id} /></span>`;
}

const recurringColumns = [
  { label: 'Plan', render: (grant) => html`<${PlanName} planId=${grant.plan_id} name=${grant.plan_name} />` },
  { label: 'Credits', numeric: true, render: (grant) => credits(grant.credits) },
  { label: 'Given', render: (grant) => cadenceWords[grant.every] ?? grant.every },
  {
    label: 'This period',
    render: (grant) => html`<span>from ${grant.period_start} until <${Time} value=${grant.period_end} /></span>`,
  },
  { label: "This period's grant", render: (grant) => html`<${PeriodGrant} grant=${grant.grant} />` },
];

function Meters({ meters }) {
  if (meters === 'all') return html`<span>Every meter</span>`;
  if (meters.length === 0) return html`<span>No meter: every priced spend is refused (spends of a plain amount are not)</span>`;
  return html`<ul class="inline-list">${meters.map((meter) => html`<li key=${meter}><span class="id" title=${meter}>${meter}</span></li>`)}</ul>`;
}

/** The account's plan, where it comes from, and what it may use. */
export function PlanAndEntitlements({ api, accountId, version }) {
  const plan = useLoad(() => api.get(path('/v1/admin/accounts', accountId, 'plan')), [api, accountId, version]);
  const data = plan.data;
  const source = data ? (sourceWords[data.source] ?? { value: data.source, note: '' }) : null;
  return html`<section class="panel" aria-labelledby="plan-title">
    <h2 id="plan-title">Plan and entitlements</h2>
    <${Problem} error=${plan.error} doing="load the plan and entitlements" retry=${plan.reload} />
    <div id="account-plan">
      ${
        data === undefined
          ? plan.error
            ? null
            : html`<${Loading} what="the plan" />`
          : html`<dl class="facts">
            <dt>Plan</dt><dd id="plan-name"><${PlanName} planId=${data.plan_id} name=${data.plan_name} />
              ${data.plan_id === null && data.source === 'subscription' ? html` <span class="muted">(its subscription's price is not in the catalog)</span>` : null}</dd>
            <dt>From</dt><dd id="plan-source">${source.value} <span class="muted">(${source.note})</span></dd>
            <dt>Meters</dt><dd id="plan-meters"><${Meters} meters=${data.meters} /></dd>
            <dt>Rate card</dt><dd id="plan-rate-card">${
              data.rate_card
                ? html`<a href=${`#/rate-cards?card=${encodeURIComponent(data.rate_card.id)}&version=${data.rate_card.version}`}>${data.rate_card.id}, version ${data.rate_card.version}</a> <span class="muted">(prices its spends now)</span>`
                : html`<span class="muted">none: the catalog has no rate cards, so spends are plain amounts</span>`
            }</dd>
          </dl>
          <div id="plan-features">
            <${Table} caption="Features: the app's own values, which Tally serves and never reads" columns=${featureColumns}
              rows=${Object.entries(data.features).map(([name, value]) => ({ name, value }))}
              empty="No features: the plan gives the app no values of its own." rowKey=${(feature) => feature.name} />
          </div>
          <div id="recurring-grants">
            <${Table} caption="Recurring grants: credits the plan gives each period, expiring at its end (never rolled over)" columns=${recurringColumns}
              rows=${data.recurring_grants} empty="No recurring grants: the plan gives no credits by day, week or month."
              rowKey=${(grant) => `${grant.plan_id}:${grant.every}`} />
          </div>`
      }
    </div>
  </section>`;
}

const windowWords = { day: 'Day (UTC)', month: 'Month (UTC)' };

function SpendLimits({ limits }) {
  if (limits.per_day === null && limits.per_month === null) {
    return html`<p class="empty-note">No spend limits: spends are not capped per day or per month. Spent today ${credits(limits.spent.day)}, this month ${credits(limits.spent.month)} (UTC).</p>`;
  }
  const rows = ['day', 'month'].map((window) => ({
    window,
    limit: window === 'day' ? limits.per_day : limits.per_month,
    spent: limits.spent[window],
    resets_at: limits.resets_at[window],
  }));
  const columns = [
    { label: 'Window', render: (row) => windowWords[row.window] },
    {
      label: 'Limit',
      numeric: true,
      render: (row) => (row.limit === null ? html`<span class="muted">no limit</span>` : credits(row.limit)),
    },
    { label: 'Spent', numeric: true, render: (row) => credits(row.spent) },
    {
      label: 'Left',
      numeric: true,
      render: (row) => (row.limit === null ? html`<span class="muted">—</span>` : credits(Math.max(0, row.limit - row.spent))),
    },
    { label: 'Resets', render: (row) => html`<${Time} value=${row.resets_at} />` },
  ];
  return html`<${Table} caption="Spend limits: a usage or hold that would pass one is refused (402 spend_limit_exceeded)" columns=${columns} rows=${rows} empty="" rowKey=${(row) => row.window} />`;
}

function AutoTopUp({ setting }) {
  if (setting === null) return html`<p class="empty-note">Auto top-up is off: it was never set up for this account.</p>`;
  const saved = html`buys ${html`<${Id} value=${setting.pack_id} />`} when available falls below ${credits(setting.threshold)} credits, at most ${credits(setting.max_per_month)} a month`;
  const failures = setting.failures_in_row;
  if (!setting.enabled) {
    const why =
      failures >= topUpFailuresInRowMax
        ? `turned off after ${failures} failed payments in a row; turning it on again resets the count`
        : 'turned off in its settings';
    return html`<p><${Badge} value="off" /> Auto top-up is off (${why}). Saved settings: ${saved}. Changed <${Time} value=${setting.updated_at} />.</p>`;
  }
  const failed =
    failures > 0
      ? html`<span class="warn-text">${failures} failed payment${failures === 1 ? '' : 's'} in a row (${topUpFailuresInRowMax} turn it off).</span>`
      : 'No failed payment since the last one that went through.';
  return html`<p><${Badge} value="on" /> Auto top-up is on: it ${saved}. ${failed} Changed <${Time} value=${setting.updated_at} />.</p>`;
}

/** The account's settings, as GET /v1/accounts/{id} answers them. */
export function Settings({ account }) {
  return html`<section class="panel settings" aria-labelledby="settings-title">
    <h2 id="settings-title">Settings</h2>
    <h3>Spend limits</h3>
    <div id="spend-limits"><${SpendLimits} limits=${account.limits} /></div>
    <h3>Low-balance threshold</h3>
    <div id="low-balance-threshold">${
      account.low_balance_threshold === null
        ? html`<p class="empty-note">No low-balance threshold: no balance.low event is sent for a threshold of its own.</p>`
        : html`<p>${credits(account.low_balance_threshold)} credits: a balance.low event is sent when available falls below it.</p>`
    }</div>
    <h3>Auto top-up</h3>
    <div id="auto-top-up"><${AutoTopUp} setting=${account.auto_top_up} /></div>
  </section>`;
}

/** "42.9 %" of the accounts; a sliver shows as "< 0.1 %", never as 0. */
function share(count, total) {
  if (total === 0) return '—';
  const percent = (count / total) * 100;
  return count > 0 && percent < 0.1 ? '< 0.1 %' : `${percent.toFixed(1)} %`;
}

function PlanRowName({ row }) {
  if (row.plan_id === null)
    return html`<span>No plan <span class="muted">(no live subscription and no free plan, or a price outside the catalog)</span></span>`;
  return html`<span><${PlanName} planId=${row.plan_id} name=${row.name} />${row.free ? html` <${Badge} value="free_plan" />` : null}</span>`;
}

/**
 * Accounts per plan on the overview: a small table, each row's share drawn as a bar (its width
 * set through the DOM's style object, which the page's CSP allows, unlike a style attribute).
 */
export function AccountsPerPlan({ perPlan }) {
  const { data, error, reload } = perPlan;
  const columns = [
    { label: 'Plan', render: (row) => html`<${PlanRowName} row=${row} />` },
    { label: 'Accounts', numeric: true, render: (row) => credits(row.accounts) },
    {
      label: 'By subscription',
      numeric: true,
      render: (row) => (row.free ? html`<span class="muted">—</span>` : credits(row.subscription)),
    },
    { label: 'In a trial', numeric: true, render: (row) => (row.free ? html`<span class="muted">—</span>` : credits(row.trial)) },
    {
      label: 'Share',
      render: (row) =>
        html`<span class="share"><span class="share-bar" aria-hidden="true"><span style=${{ width: `${data.accounts === 0 ? 0 : (row.accounts / data.accounts) * 100}%` }}></span></span>${share(row.accounts, data.accounts)}</span>`,
    },
  ];
  return html`<section class="panel" aria-labelledby="per-plan-title">
    <h2 id="per-plan-title">Accounts per plan</h2>
    <${Problem} error=${error} doing="load the accounts per plan" retry=${reload} />
    <div id="accounts-per-plan">
      ${
        data === undefined
          ? error
            ? null
            : html`<${Loading} what="the accounts per plan" />`
          : html`<${Table} caption=${`The plan each of the ${credits(data.accounts)} accounts is on now, as a spend decides it`} columns=${columns} rows=${data.plans} empty="No plans." rowKey=${(row) => row.plan_id ?? ''} />`
      }
    </div>
  </section>`;
}
