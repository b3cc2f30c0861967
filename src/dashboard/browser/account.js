// One account: who it is, its balance and balance over time, its spend by meter, its
// subscription and trial, its plan and entitlements, its settings (spend limits, low-balance
// threshold, auto top-up), its grants (live and past), pending holds (void one), the ledger (a
// priced entry with its meter, quantities, exact cost and rate card version) and the events the
// app was told about; and, with the admin key, grant and adjust, each with a reason and a
// confirmation.
import { useMemo, useState } from './vendor/hooks.js';
import { path, query } from './api.js';
import { RangePicker, TimeChart } from './chart.js';
import { AccountActions, VoidHold } from './actions.js';
import { PricedSummary } from './ratecards.js';
import { PlanAndEntitlements, Settings } from './plans.js';
import { Badge, credits, decimal, Figure, html, Id, Json, Loading, Pager, Problem, signed, Table, Time, useLoad } from './ui.js';

const pageSize = 25;
const balanceSeries = [{ key: 'balance', label: 'Balance', color: '#2563eb', fill: 'rgba(37, 99, 235, 0.08)' }];

export function Account({ api, accountId, canAct }) {
  // Bumped after an action, so every part of the page reads again.
  const [version, setVersion] = useState(0);
  const changed = () => setVersion((value) => value + 1);
  const account = useLoad(() => api.get(path('/v1/accounts', accountId)), [api, accountId, version]);
  const data = account.data;
  return html`<section aria-labelledby="account-title" class="account">
    <div class="page-head">
      <h1 id="account-title">Account <span class="account-id" title=${accountId}>${accountId}</span></h1>
      <button type="button" onClick=${changed}>Refresh</button>
    </div>
    <p><a href="#/accounts">← All accounts</a></p>
    <${Problem} error=${account.error} doing="load this account" retry=${account.reload} />
    ${
      data === undefined
        ? account.error
          ? null
          : html`<${Loading} what="the account" />`
        : html`
        <div class="overview-grid">
          <${Identity} account=${data} />
          <${Balance} account=${data} />
          <${Subscription} account=${data} />
        </div>
        <${PlanAndEntitlements} api=${api} accountId=${accountId} version=${version} />
        <${Settings} account=${data} />
        ${canAct ? html`<${AccountActions} api=${api} accountId=${accountId} onDone=${changed} />` : null}
        <${BalanceChart} api=${api} accountId=${accountId} version=${version} />
        <${MeterSpend} api=${api} accountId=${accountId} version=${version} />
        <${Grants} api=${api} accountId=${accountId} version=${version} />
        <${Holds} api=${api} accountId=${accountId} version=${version} canAct=${canAct} onChanged=${changed} />
        <${Ledger} api=${api} accountId=${accountId} version=${version} />
        <${Events} api=${api} accountId=${accountId} version=${version} />`
    }
  </section>`;
}

function Identity({ account }) {
  const metadata = account.metadata && Object.keys(account.metadata).length > 0 ? account.metadata : null;
  return html`<section class="panel" aria-labelledby="identity">
    <h2 id="identity">Who</h2>
    <dl class="facts">
      <dt>Name</dt><dd id="account-name">${account.name ?? html`<span class="muted">—</span>`}</dd>
      <dt>Email</dt><dd id="account-email">${account.email ?? html`<span class="muted">—</span>`}</dd>
      <dt>Stripe customer</dt><dd><${Id} value=${account.stripe_customer_id} /></dd>
      <dt>Created</dt><dd><${Time} value=${account.created_at} /></dd>
      ${account.flagged ? html`<dt>Flag</dt><dd><${Badge} value="flagged" /> a payment was disputed</dd>` : null}
    </dl>
    ${metadata ? html`<details id="account-metadata"><summary>Metadata</summary><${Json} value=${metadata} /></details>` : null}
  </section>`;
}

function Balance({ account }) {
  const balance = account.balance;
  return html`<section class="panel" aria-labelledby="balance">
    <h2 id="balance">Balance</h2>
    <dl class="figures">
      <${Figure} id="account-available" name="Available" value=${credits(balance.available)} note="can be spent now" />
      <${Figure} id="account-held" name="Held" value=${credits(balance.held)} note="reserved by pending holds" />
      <${Figure} id="account-debt" name="Debt" value=${credits(balance.debt)} note="repaid first by the next grants" tone=${balance.debt > 0 ? 'warn' : undefined} />
    </dl>
  </section>`;
}

function Subscription({ account }) {
  const subscription = account.subscription;
  const trial = account.trial;
  return html`<section class="panel" aria-labelledby="subscription">
    <h2 id="subscription">Subscription and trial</h2>
    ${
      subscription
        ? html`<dl class="facts">
          <dt>Plan</dt><dd>${subscription.plan_id ?? '—'} (${subscription.interval ?? '—'}) <${Badge} value=${subscription.status} /></dd>
          <dt>Period</dt><dd><${Time} value=${subscription.current_period_start} /> to <${Time} value=${subscription.current_period_end} /></dd>
          <dt>Stripe subscription</dt><dd><${Id} value=${subscription.id} /></dd>
          ${subscription.cancel_at_period_end ? html`<dt>Ends</dt><dd>at the end of this period (cancelled)</dd>` : null}
          ${subscription.trial_end ? html`<dt>Trial ends</dt><dd><${Time} value=${subscription.trial_end} /></dd>` : null}
        </dl>`
        : html`<p class="muted">No subscription: this account has never subscribed through Stripe.</p>`
    }
    ${
      trial
        ? html`<p>Trial: ${credits(trial.credits)} credits, ${credits(trial.remaining)} left, expiring <${Time} value=${trial.expires_at} empty="never" />.</p>`
        : html`<p class="muted">No trial granted.</p>`
    }
  </section>`;
}

function BalanceChart({ api, accountId, version }) {
  const [days, setDays] = useState(30);
  const history = useLoad(
    () => api.get(path('/v1/admin/accounts', accountId, 'balance-history') + query({ days })),
    [api, accountId, days, version],
  );
  return html`<section class="panel" aria-labelledby="balance-over-time">
    <div class="panel-head">
      <h2 id="balance-over-time">Balance over time</h2>
      <${RangePicker} name="balance-range" days=${days} onChange=${setDays} />
    </div>
    <${Problem} error=${history.error} doing="load the balance over time" retry=${history.reload} />
    ${
      history.data
        ? html`<${TimeChart} id="balance-chart" level=${true} title=${`Balance (available minus debt) at the end of each day (UTC), last ${days} days`} rows=${history.data.days} series=${balanceSeries} />`
        : null
    }
  </section>`;
}

const meterColors = ['#2563eb', '#d97706', '#059669', '#7c3aed', '#dc2626', '#0891b2', '#db2777'];
const otherColor = '#6b7280';
const meterName = (meter) => meter ?? 'No meter (a plain amount)';

/**
 * The chart's lines: one per meter, most credits first, and the meters past the palette summed
 * as one "Other meters" line (the table below lists each of them).
 */
function meterChart(spend) {
  const shown = spend.meters.slice(0, spend.meters.length > meterColors.length ? meterColors.length - 1 : meterColors.length);
  const series = shown.map((total, index) => ({ key: `m${index}`, label: meterName(total.meter), color: meterColors[index] }));
  const others = spend.meters.length > shown.length;
  if (others) series.push({ key: 'other', label: 'Other meters', color: otherColor });
  const rows = spend.days.map((day) => {
    const row = { day: day.day, other: '0' };
    shown.forEach((_total, index) => {
      row[`m${index}`] = '0';
    });
    for (const spent of day.meters) {
      const index = shown.findIndex((total) => total.meter === spent.meter);
      if (index >= 0) row[`m${index}`] = String(spent.credits);
      else row.other = String(BigInt(row.other) + BigInt(spent.credits));
    }
    return row;
  });
  return { rows, series };
}

const meterColumns = [
  {
    label: 'Meter',
    render: (total) =>
      total.meter
        ? html`<span class="clip" title=${total.meter}>${total.meter}</span>`
        : html`<span class="muted">${meterName(null)}</span>`,
  },
  { label: 'Credits', numeric: true, render: (total) => credits(total.credits) },
  {
    label: 'Exact cost',
    numeric: true,
    render: (total) => (total.cost === null ? html`<span class="muted">—</span>` : html`<span class="cost">${decimal(total.cost)}</span>`),
  },
  { label: 'Spends', numeric: true, render: (total) => credits(total.spends) },
];

function MeterSpend({ api, accountId, version }) {
  const [days, setDays] = useState(30);
  const spend = useLoad(
    () => api.get(path('/v1/admin/accounts', accountId, 'meter-spend') + query({ days })),
    [api, accountId, days, version],
  );
  const data = spend.data;
  const chart = useMemo(() => (data ? meterChart(data) : null), [data]);
  return html`<section class="panel" aria-labelledby="meter-spend-title">
    <div class="panel-head">
      <h2 id="meter-spend-title">Spend by meter</h2>
      <${RangePicker} name="meter-spend-range" days=${days} onChange=${setDays} />
    </div>
    <${Problem} error=${spend.error} doing="load the spend by meter" retry=${spend.reload} />
    <div id="meter-spend">
      ${
        data === undefined
          ? spend.error
            ? null
            : html`<${Loading} what="the spend by meter" />`
          : data.meters.length === 0
            ? html`<p class="empty-note">No spends from ${data.from} to ${data.to} (the last ${days} days, UTC): nothing was charged to this account, by meter or as a plain amount.</p>`
            : html`<${TimeChart} id="meter-spend-chart" title=${`Credits spent per meter per day (UTC), ${data.from} to ${data.to}`} rows=${chart.rows} series=${chart.series} />
              <${Table} caption=${`Spend by meter from ${data.from} to ${data.to}, most credits first: credits charged (usage and captured holds) and the exact cost they were priced at`} columns=${meterColumns} rows=${data.meters} empty="No spends." rowKey=${(total) => total.meter ?? ''} />`
      }
    </div>
  </section>`;
}

const grantColumns = [
  { label: 'Grant', render: (grant) => html`<${Id} value=${grant.id} />` },
  { label: 'Source', render: (grant) => html`<${Badge} value=${grant.source} />` },
  { label: 'Amount', numeric: true, render: (grant) => credits(grant.amount) },
  { label: 'Remaining', numeric: true, render: (grant) => credits(grant.remaining) },
  { label: 'Expires', render: (grant) => html`<${Time} value=${grant.expires_at} empty="never" />` },
  { label: 'Priority', numeric: true, render: (grant) => String(grant.priority) },
  { label: 'Granted', render: (grant) => html`<${Time} value=${grant.created_at} />` },
  { label: 'State', render: (grant) => html`<${Badge} value=${grant.state} />` },
  { label: 'Reference', render: (grant) => html`<${Reference} value=${grant.reference} />` },
];

function Grants({ api, accountId, version }) {
  const [pastOffset, setPastOffset] = useState(0);
  const live = useLoad(
    () => api.get(path('/v1/admin/accounts', accountId, 'grants') + query({ state: 'live', limit: 200 })),
    [api, accountId, version],
  );
  const past = useLoad(
    () => api.get(path('/v1/admin/accounts', accountId, 'grants') + query({ state: 'past', limit: pageSize, offset: pastOffset })),
    [api, accountId, version, pastOffset],
  );
  return html`<section class="panel" aria-labelledby="grants">
    <h2 id="grants">Grants</h2>
    <${Problem} error=${live.error || past.error} doing="load the grants" retry=${() => {
      live.reload();
      past.reload();
    }} />
    <div id="live-grants">
      ${live.data ? html`<${Table} caption="Live grants, spent in this order: priority, earliest expiry, oldest" columns=${grantColumns} rows=${live.data.grants} empty="No live grants: nothing is left to spend." rowKey=${(grant) => grant.id} />` : null}
    </div>
    <div id="past-grants">
      ${
        past.data
          ? html`<${Table} caption="Past grants (used up or expired), newest first" columns=${grantColumns} rows=${past.data.grants} empty="No past grants: no grant has been used up or has expired." rowKey=${(grant) => grant.id} />
          <${Pager} label="Past grant pages" position=${`From grant ${pastOffset + 1}`}
            onPrevious=${pastOffset > 0 ? () => setPastOffset(Math.max(0, pastOffset - pageSize)) : undefined}
            onNext=${past.data.next_offset !== null ? () => setPastOffset(past.data.next_offset) : undefined} />`
          : null
      }
    </div>
  </section>`;
}

function Holds({ api, accountId, version, canAct, onChanged }) {
  const holds = useLoad(
    () => api.get(path('/v1/admin/accounts', accountId, 'holds') + query({ status: 'pending', limit: 200 })),
    [api, accountId, version],
  );
  const columns = [
    { label: 'Hold', render: (hold) => html`<${Id} value=${hold.id} />` },
    { label: 'Amount', numeric: true, render: (hold) => credits(hold.amount) },
    { label: 'Expires', render: (hold) => html`<${Time} value=${hold.expires_at} />` },
    { label: 'Created', render: (hold) => html`<${Time} value=${hold.created_at} />` },
    { label: 'Key', render: (hold) => html`<${Id} value=${hold.idempotency_key} />` },
  ];
  if (canAct) columns.push({ label: 'Action', render: (hold) => html`<${VoidHold} api=${api} hold=${hold} onDone=${onChanged} />` });
  return html`<section class="panel" aria-labelledby="holds">
    <h2 id="holds">Pending holds</h2>
    <${Problem} error=${holds.error} doing="load the holds" retry=${holds.reload} />
    <div id="holds-table">
      ${holds.data ? html`<${Table} caption="Credits reserved until captured, voided or expired" columns=${columns} rows=${holds.data.holds} empty="No pending holds: no credits are reserved." rowKey=${(hold) => hold.id} />` : null}
    </div>
  </section>`;
}

/** What an entry's reference says besides its description (a Stripe object, a hold). */
function Reference({ value }) {
  if (!value || typeof value !== 'object') return html`<span class="muted">—</span>`;
  const { description: _description, ...rest } = value;
  if (Object.keys(rest).length === 0) return html`<span class="muted">—</span>`;
  const text = JSON.stringify(rest);
  return html`<span class="clip" title=${text}>${text}</span>`;
}

const ledgerColumns = [
  {
    label: 'Time',
    render: (entry) =>
      html`<a href=${`#/entries/${encodeURIComponent(entry.id)}`} title=${entry.id}><${Time} value=${entry.created_at} /></a>`,
  },
  { label: 'Kind', render: (entry) => html`<${Badge} value=${entry.kind} />` },
  { label: 'Amount', numeric: true, render: (entry) => signed(entry.amount) },
  { label: 'Balance after', numeric: true, render: (entry) => credits(entry.balance_after) },
  { label: 'Meter and cost', render: (entry) => html`<${PricedSummary} entry=${entry} />` },
  { label: 'Actor', render: (entry) => entry.actor },
  {
    label: 'Reason',
    render: (entry) => (entry.reason ? html`<span class="text">${entry.reason}</span>` : html`<span class="muted">—</span>`),
  },
  {
    label: 'Description',
    render: (entry) =>
      entry.reference && typeof entry.reference.description === 'string'
        ? html`<span class="text">${entry.reference.description}</span>`
        : html`<span class="muted">—</span>`,
  },
  { label: 'Reference', render: (entry) => html`<${Reference} value=${entry.reference} />` },
  { label: 'Key', render: (entry) => html`<${Id} value=${entry.idempotency_key} />` },
];

function Ledger({ api, accountId, version }) {
  // Cursors of the pages seen, so "previous" goes back to a newer page.
  const [cursors, setCursors] = useState([undefined]);
  const cursor = cursors[cursors.length - 1];
  const ledger = useLoad(
    () => api.get(path('/v1/accounts', accountId, 'ledger') + query({ limit: pageSize, cursor })),
    [api, accountId, version, cursor],
  );
  return html`<section class="panel" aria-labelledby="ledger-title">
    <h2 id="ledger-title">Ledger</h2>
    <${Problem} error=${ledger.error} doing="load the ledger" retry=${ledger.reload} />
    <div id="ledger">
      ${
        ledger.data
          ? html`<${Table} caption="Every change of credits, newest first" columns=${ledgerColumns} rows=${ledger.data.entries} empty="No ledger entries yet: no credits have been granted or spent." rowKey=${(entry) => entry.id} />
          <${Pager} label="Ledger pages" position=${`Page ${cursors.length}`}
            onPrevious=${cursors.length > 1 ? () => setCursors(cursors.slice(0, -1)) : undefined}
            onNext=${ledger.data.next_cursor ? () => setCursors([...cursors, ledger.data.next_cursor]) : undefined} />`
          : null
      }
    </div>
  </section>`;
}

function Events({ api, accountId, version }) {
  const [afters, setAfters] = useState([0]);
  const after = afters[afters.length - 1];
  const events = useLoad(
    () => api.get(`/v1/events${query({ account_id: accountId, after, limit: pageSize })}`),
    [api, accountId, version, after],
  );
  const columns = [
    { label: 'Sequence', numeric: true, render: (event) => String(event.sequence) },
    { label: 'Type', render: (event) => html`<${Badge} value=${event.type} />` },
    { label: 'Time', render: (event) => html`<${Time} value=${event.created_at} />` },
    { label: 'Data', render: (event) => html`<details><summary>Show</summary><${Json} value=${event.data} /></details>` },
  ];
  const page = events.data ? events.data.events : [];
  return html`<section class="panel" aria-labelledby="events-title">
    <h2 id="events-title">Events sent to the app</h2>
    <${Problem} error=${events.error} doing="load the events" retry=${events.reload} />
    <div id="account-events">
      ${
        events.data
          ? html`<${Table} caption="Events about this account, oldest first" columns=${columns} rows=${page} empty="No events about this account yet (grants, expiries, clawbacks, low balance and the like write one)." rowKey=${(event) => event.id} />
          <${Pager} label="Event pages" position=${`Page ${afters.length}`}
            onPrevious=${afters.length > 1 ? () => setAfters(afters.slice(0, -1)) : undefined}
            onNext=${page.length === pageSize ? () => setAfters([...afters, events.data.next_after]) : undefined} />`
          : null
      }
    </div>
  </section>`;
}
