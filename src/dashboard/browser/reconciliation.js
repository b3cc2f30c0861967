// Reconciliation: the runs, newest first, each with its findings linked to their accounts and
// entries; "run now" with the admin key. A run only reports; it never changes the ledger.
import { useState } from './vendor/hooks.js';
import { path } from './api.js';
import { accountHref } from './accounts.js';
import { rateCardHref, quantitiesText } from './ratecards.js';
import { Badge, credits, decimal, html, Id, Loading, Problem, signed, Table, Time, useLoad } from './ui.js';

const runLimit = 20;
const findingsShownMax = 200;

function RunNow({ api, stripeConfigured, onDone }) {
  const [withStripe, setWithStripe] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [done, setDone] = useState('');
  const run = async () => {
    setBusy(true);
    setError(null);
    setDone('');
    try {
      const report = await api.post('/v1/admin/reconcile', { stripe: withStripe });
      setDone(
        report.finding_count === 0
          ? `Run ${report.run_id} found no problems.`
          : `Run ${report.run_id} found ${report.finding_count} problems; they are listed below.`,
      );
      onDone();
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="run-now">
    ${
      stripeConfigured
        ? html`<label class="check"><input type="checkbox" id="reconcile-stripe" checked=${withStripe} onChange=${(event) => setWithStripe(event.currentTarget.checked)} /> Also compare with Stripe (paid invoices and refunds of the last 30 days)</label>`
        : null
    }
    <button type="button" id="reconcile" class="primary" disabled=${busy} onClick=${run}>${busy ? 'Running…' : 'Run now'}</button>
    ${done ? html`<p class="done" role="status">${done}</p>` : null}
    <${Problem} error=${error} doing="run the reconciliation" />
  </div>`;
}

const entryLinks = (ids) =>
  ids && ids.length > 0 ? ids.map((id) => html`<${Id} value=${id} href=${`#/entries/${encodeURIComponent(id)}`} /> `) : null;

function Findings({ run }) {
  if (run.status === 'failed')
    return html`<p class="problem">This run failed before it finished: <span class="text">${run.error || 'no reason recorded'}</span>. Run it again; if it fails again, Tally's log says why.</p>`;
  if (run.status === 'running') return html`<p class="muted">Still running.</p>`;
  const findings = (run.findings || []).slice(0, findingsShownMax);
  return html`<${Table}
    caption=${`Findings of run ${run.run_id}`}
    hideCaption=${true}
    columns=${[
      { label: 'Check', render: (finding) => finding.check.replace(/_/g, ' ') },
      {
        label: 'Account',
        render: (finding) =>
          finding.account_id
            ? html`<${Id} value=${finding.account_id} href=${accountHref(finding.account_id)} />`
            : html`<span class="muted">—</span>`,
      },
      { label: 'Finding', render: (finding) => html`<span class="text">${finding.message}</span>` },
      { label: 'Entries', render: (finding) => entryLinks(finding.entry_ids) ?? html`<span class="muted">—</span>` },
      {
        label: 'Grants and Stripe objects',
        render: (finding) => {
          const ids = [...(finding.grant_ids || []), ...(finding.stripe_ids || [])];
          return ids.length === 0 ? html`<span class="muted">—</span>` : ids.map((id) => html`<${Id} value=${id} /> `);
        },
      },
    ]}
    rows=${findings}
    empty="No findings: the ledger agrees with itself."
  />
  ${run.finding_count > findingsShownMax ? html`<p class="muted">The first ${findingsShownMax} of ${run.finding_count} findings; the CLI (tally reconcile --json) prints them all.</p>` : null}`;
}

export function Reconciliation({ api, canAct, stripeConfigured }) {
  const runs = useLoad(() => api.get(`/v1/admin/reconciliations?limit=${runLimit}`), [api]);
  const list = runs.data ? runs.data.runs : [];
  return html`<section aria-labelledby="reconciliation-title">
    <div class="page-head">
      <h1 id="reconciliation-title">Reconciliation</h1>
      <button type="button" onClick=${runs.reload}>Refresh</button>
    </div>
    <p class="muted">Each run checks that every balance equals its entries, every grant's remaining equals what entries took, no period was granted twice, and every hold is resolved or live. It reports and never changes the ledger.</p>
    ${canAct ? html`<${RunNow} api=${api} stripeConfigured=${stripeConfigured} onDone=${runs.reload} />` : null}
    <${Problem} error=${runs.error} doing="load the reconciliation runs" retry=${runs.reload} />
    ${
      runs.data === undefined
        ? runs.error
          ? null
          : html`<${Loading} what="the runs" />`
        : list.length === 0
          ? html`<p class="empty-note" id="reconciliations">No reconciliation has run yet. Tally runs one every day${canAct ? '; "Run now" starts one at once' : ''}.</p>`
          : html`<div id="reconciliations">${list.map(
              (run, index) => html`<section class="panel run" key=${run.run_id} aria-labelledby=${`run-${run.run_id}`}>
            <h2 id=${`run-${run.run_id}`}>Run ${run.run_id} <${Badge} value=${run.status} /> ${run.finding_count === null ? '' : `${credits(run.finding_count)} findings`}</h2>
            <p class="muted">Started <${Time} value=${run.started_at} /> by ${run.trigger}${run.with_stripe ? ', with Stripe' : ''}; finished <${Time} value=${run.finished_at} empty="not yet" />.</p>
            ${index === 0 ? html`<${Findings} run=${run} />` : html`<details><summary>Findings</summary><${Findings} run=${run} /></details>`}
          </section>`,
            )}</div>`
    }
  </section>`;
}

/** One entry, as a finding names it, with its account. */
export function Entry({ api, entryId }) {
  const entry = useLoad(() => api.get(path('/v1/admin/entries', entryId)), [api, entryId]);
  const data = entry.data;
  return html`<section aria-labelledby="entry-title">
    <div class="page-head"><h1 id="entry-title">Ledger entry <span class="account-id">${entryId}</span></h1></div>
    <${Problem} error=${entry.error} doing="load the entry" retry=${entry.reload} />
    ${
      data
        ? html`<section class="panel"><dl class="facts">
          <dt>Account</dt><dd><${Id} value=${data.account_id} href=${accountHref(data.account_id)} /></dd>
          <dt>Kind</dt><dd><${Badge} value=${data.kind} /></dd>
          <dt>Amount</dt><dd>${signed(data.amount)}</dd>
          <dt>Balance after</dt><dd>${credits(data.balance_after)}</dd>
          ${
            data.meter
              ? html`<dt>Meter</dt><dd class="text">${data.meter}</dd>
                <dt>Quantities</dt><dd>${quantitiesText(data.quantities)}</dd>
                <dt>Cost</dt><dd><span class="cost">${decimal(data.cost)}</span> credits, priced by <a href=${rateCardHref(data.rate_card.id, data.rate_card.version)}>${data.rate_card.id} version ${data.rate_card.version}</a></dd>
                ${data.carry_after === undefined || data.carry_after === null ? null : html`<dt>Carry after</dt><dd><span class="cost">${decimal(data.carry_after)}</span> of a credit priced and not yet charged</dd>`}`
              : null
          }
          <dt>Actor</dt><dd>${data.actor}</dd>
          <dt>Reason</dt><dd class="text">${data.reason ?? '—'}</dd>
          <dt>Key</dt><dd class="text">${data.idempotency_key}</dd>
          <dt>Grants</dt><dd>${(data.grant_ids || []).join(', ') || '—'}</dd>
          <dt>Time</dt><dd><${Time} value=${data.created_at} /></dd>
          <dt>Reference</dt><dd><pre class="json">${JSON.stringify(data.reference, null, 2)}</pre></dd>
        </dl></section>`
        : entry.error
          ? null
          : html`<${Loading} what="the entry" />`
    }
  </section>`;
}
