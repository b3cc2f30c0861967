// Rate cards: what each meter costs in credits per unit, the version in effect, the one
// scheduled next, and every version with who published it. Read only: versions are published
// by the plan catalog at start or with PUT /v1/admin/rate-cards/{id}, never from this page. Also
// what a priced ledger entry shows: its meter, quantities, exact cost and the version that
// priced it, linked to that version here.
import { useEffect } from './vendor/hooks.js';
import { query } from './api.js';
import { Badge, credits, decimal, html, Loading, Problem, Table, Time, useLoad } from './ui.js';

/** The rate cards page, opened at one card's version (the one that priced an entry). */
export const rateCardHref = (card, version) => `#/rate-cards${query({ card, version })}`;

const sourceWords = { catalog: 'the plan catalog', admin: 'an operator' };
const published = (version) => sourceWords[version.source] ?? version.source;

/** "input_tokens 5,000 · output_tokens 1,000" */
export const quantitiesText = (quantities) =>
  Object.entries(quantities ?? {})
    .map(([dimension, count]) => `${dimension} ${credits(count)}`)
    .join(' · ');

/** A priced entry's meter, quantities, exact cost and rate card version; a dash for the others. */
export const PricedSummary = ({ entry }) =>
  entry.meter
    ? html`<div class="priced">
        <span class="clip" title=${entry.meter}>${entry.meter}</span>
        <div class="sub">${quantitiesText(entry.quantities)}</div>
        <div class="sub">cost <span class="cost">${decimal(entry.cost)}</span> · <a href=${rateCardHref(entry.rate_card.id, entry.rate_card.version)}>${entry.rate_card.id} v${entry.rate_card.version}</a></div>
      </div>`
    : html`<span class="muted">—</span>`;

export function RateCards({ api, params }) {
  const selectedCard = params.get('card');
  const selectedVersion = Number(params.get('version')) || null;
  const cards = useLoad(() => api.get('/v1/admin/rate-cards'), [api]);
  const list = cards.data ? cards.data.rate_cards : [];
  // Opened from an entry: bring its card into view once it is drawn.
  useEffect(() => {
    if (selectedCard && cards.data) document.querySelector(`[data-card="${CSS.escape(selectedCard)}"]`)?.scrollIntoView();
  }, [selectedCard, cards.data]);
  return html`<section aria-labelledby="rate-cards-title">
    <div class="page-head">
      <h1 id="rate-cards-title">Rate cards</h1>
      <button type="button" onClick=${cards.reload}>Refresh</button>
    </div>
    <p class="muted">Credits per unit of each meter's dimensions. A change is a new version, never an edit: the plan catalog publishes one at start when its rates changed, and an operator with <code>PUT /v1/admin/rate-cards/{id}</code>. Each spend keeps the version that priced it, so a price change never reprices a spend already made.</p>
    <${Problem} error=${cards.error} doing="load the rate cards" retry=${cards.reload} />
    ${
      cards.data === undefined
        ? cards.error
          ? null
          : html`<${Loading} what="the rate cards" />`
        : list.length === 0
          ? html`<p class="empty-note" id="rate-cards">No rate cards: the plan catalog declares none, so every spend is a plain amount of credits.</p>`
          : html`<div id="rate-cards">${list.map(
              (card) =>
                html`<${RateCard} key=${card.id} card=${card} selectedVersion=${card.id === selectedCard ? selectedVersion : null} />`,
            )}</div>`
    }
  </section>`;
}

function usedBy(card) {
  const plans = card.plans.length === 0 ? null : `${card.plans.length === 1 ? 'plan' : 'plans'} ${card.plans.join(', ')}`;
  const fallback = card.default ? 'accounts whose plan names no card (or with no plan)' : null;
  return [plans, fallback].filter(Boolean).join('; and ') || 'no plan names it now (it still prices the spends it priced)';
}

const compare = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

/** A version's rates as [{meter, dimension, rate}], by meter then dimension. */
const flatRates = (rates) =>
  Object.entries(rates ?? {})
    .flatMap(([meter, dimensions]) => Object.entries(dimensions).map(([dimension, rate]) => ({ meter, dimension, rate })))
    .sort((a, b) => (a.meter === b.meter ? compare(a.dimension, b.dimension) : compare(a.meter, b.meter)));

/** [{meter, dimension, now, next}] for every dimension the current or next version prices. */
function rateRows(current, next) {
  const rows = new Map();
  for (const [which, version] of [
    ['now', current],
    ['next', next],
  ]) {
    for (const { meter, dimension, rate } of flatRates(version?.rates)) {
      const key = `${meter} ${dimension}`;
      rows.set(key, { ...(rows.get(key) ?? { meter, dimension }), [which]: rate });
    }
  }
  return [...rows.values()].sort((a, b) => (a.meter === b.meter ? compare(a.dimension, b.dimension) : compare(a.meter, b.meter)));
}

const RatesList = ({ rates }) => html`<ul class="rates">
  ${flatRates(rates).map((row) => html`<li><span class="rate-name">${row.meter} ${row.dimension}</span> <span class="cost">${decimal(row.rate)}</span></li>`)}
</ul>`;

function RateCard({ card, selectedVersion }) {
  const { current, next } = card;
  const titleId = `card-${card.id}`;
  const rateColumns = [
    { label: 'Meter', render: (row) => html`<span class="clip" title=${row.meter}>${row.meter}</span>` },
    { label: 'Dimension', render: (row) => row.dimension },
    {
      label: current ? `Now (v${current.version})` : 'Now',
      numeric: true,
      render: (row) => html`<span class="cost">${decimal(row.now)}</span>`,
    },
  ];
  if (next) {
    rateColumns.push({
      label: `From v${next.version}`,
      numeric: true,
      render: (row) =>
        html`<span class="cost">${decimal(row.next)}</span>${row.next !== row.now ? html` <span class="sub">(changes)</span>` : null}`,
    });
  }
  const versionColumns = [
    {
      label: 'Version',
      numeric: true,
      render: (version) =>
        version.version === selectedVersion
          ? html`<strong class="selected" aria-current="true" data-version=${version.version}>v${version.version}</strong>`
          : html`<span data-version=${version.version}>v${version.version}</span>`,
    },
    { label: 'State', render: (version) => html`<${Badge} value=${version.state} />` },
    { label: 'Effective', render: (version) => html`<${Time} value=${version.effective_at} />` },
    { label: 'Published', render: (version) => html`<${Time} value=${version.published_at} />` },
    { label: 'Published by', render: (version) => html`<${Badge} value=${version.source} />` },
    {
      label: 'Rates',
      render: (version) =>
        html`<details open=${version.version === selectedVersion}><summary>Show rates</summary><${RatesList} rates=${version.rates} /></details>`,
    },
  ];
  return html`<section class="panel rate-card" aria-labelledby=${titleId} data-card=${card.id}>
    <h2 id=${titleId}>${card.id} ${card.default ? html`<${Badge} value="default" />` : null}</h2>
    ${selectedVersion ? html`<p class="notice">Version ${selectedVersion} priced the entry you came from; it is marked below.</p>` : null}
    <dl class="facts">
      <dt>Prices spends of</dt><dd>${usedBy(card)}</dd>
      <dt>In effect</dt>
      <dd data-fact="current">${
        current
          ? html`version ${current.version}, since <${Time} value=${current.effective_at} />, published by ${published(current)}`
          : html`<span class="muted">no version yet</span>`
      }</dd>
      <dt>Next</dt>
      <dd data-fact="next">${
        next
          ? html`version ${next.version} from <${Time} value=${next.effective_at} />, published by ${published(next)}`
          : html`<span class="muted">none scheduled</span>`
      }</dd>
    </dl>
    <${Table}
      caption=${next ? `Credits per unit now, and from version ${next.version}` : 'Credits per unit now'}
      columns=${rateColumns}
      rows=${rateRows(current, next)}
      empty="This card prices no meter."
      rowKey=${(row) => `${row.meter} ${row.dimension}`}
    />
    <details class="history" open=${selectedVersion !== null}>
      <summary>Version history (${credits(card.versions_total)} ${card.versions_total === 1 ? 'version' : 'versions'})</summary>
      <${Table}
        caption="Every version, newest published first"
        columns=${versionColumns}
        rows=${card.versions}
        empty="No version has been published."
        rowKey=${(version) => version.version}
      />
      ${
        card.versions_total > card.versions.length
          ? html`<p class="muted">The newest ${card.versions.length} of ${credits(card.versions_total)} versions; <code>GET /v1/admin/rate-cards/${card.id}/versions</code> lists every one.</p>`
          : null
      }
    </details>
  </section>`;
}
