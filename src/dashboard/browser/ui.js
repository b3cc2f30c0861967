// Shared pieces of the dashboard. Everything from Tally's API (names, emails, reasons,
// descriptions, metadata, Stripe payloads) is rendered by Preact as text nodes or attribute
// values, never parsed as HTML: this file has no innerHTML and no dangerouslySetInnerHTML.
import { h } from './vendor/preact.js';
import { useCallback, useEffect, useRef, useState } from './vendor/hooks.js';
import htm from './vendor/htm.js';
import { describeError } from './api.js';

export const html = htm.bind(h);

/** Credits as digits grouped by thousands; exact for sums given as decimal strings. */
export function credits(value) {
  if (value === null || value === undefined || value === '') return '—';
  try {
    return BigInt(value).toLocaleString('en-US');
  } catch {
    return String(value);
  }
}

/**
 * An exact decimal (a cost or a rate, sent as a string from PostgreSQL numeric) with its whole
 * part grouped by thousands: "12345.000125" → "12,345.000125". Read as text, never as a float,
 * so no digit is lost or rounded.
 */
export function decimal(value) {
  if (value === null || value === undefined || value === '') return '—';
  const match = /^([0-9]+)(\.[0-9]+)?$/.exec(String(value));
  return match ? BigInt(match[1]).toLocaleString('en-US') + (match[2] ?? '') : String(value);
}

/** A signed change of credits: "+500", "−120". */
export function signed(value) {
  if (value === null || value === undefined) return '—';
  const number = BigInt(value);
  return number > 0n ? `+${number.toLocaleString('en-US')}` : number < 0n ? `−${(-number).toLocaleString('en-US')}` : '0';
}

/** An ISO time as "2030-01-31 12:00:05 UTC", readable and sortable. */
export function time(iso) {
  if (!iso) return '';
  return String(iso)
    .replace('T', ' ')
    .replace(/\.\d+/, '')
    .replace(/Z$|\+00:00$/, ' UTC');
}

/** A time element showing the short form, with the exact ISO value on hover. */
export const Time = ({ value, empty = '—' }) =>
  value ? html`<time datetime=${value} title=${value}>${time(value)}</time>` : html`<span class="muted">${empty}</span>`;

/** A long id, cut to the width it has with an ellipsis; the whole id shows on hover and is copied whole. */
export const Id = ({ value, href }) => {
  if (value === null || value === undefined || value === '') return html`<span class="muted">—</span>`;
  const text = String(value);
  return href ? html`<a class="id" href=${href} title=${text}>${text}</a>` : html`<span class="id" title=${text}>${text}</span>`;
};

export const Badge = ({ value }) =>
  html`<span class=${`badge badge-${String(value).replace(/[^a-z_]/g, '')}`}>${String(value).replace(/_/g, ' ')}</span>`;

export const Json = ({ value }) => html`<pre class="json">${JSON.stringify(value, null, 2)}</pre>`;

/** A note that a load or an action failed, in the operator's words, with a way to retry. */
export const Problem = ({ error, doing, retry }) =>
  error
    ? html`<div class="problem" role="alert"><p>${describeError(error, doing)}</p>${retry ? html`<button type="button" onClick=${retry}>Try again</button>` : null}</div>`
    : null;

export const Loading = ({ what }) => html`<p class="muted" role="status">Loading ${what}…</p>`;

/**
 * Loads with the API whenever `deps` change; `reload` loads again. A load that finishes after a
 * newer one started is dropped.
 */
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: undefined, error: null, loading: true });
  const generation = useRef(0);
  const run = useCallback(() => {
    const mine = ++generation.current;
    setState((previous) => ({ ...previous, loading: true }));
    load().then(
      (data) => mine === generation.current && setState({ data, error: null, loading: false }),
      (error) => mine === generation.current && setState((previous) => ({ data: previous.data, error, loading: false })),
    );
  }, deps);
  useEffect(run, [run]);
  return { ...state, reload: run };
}

/**
 * A data table: a caption, headers, one row per item, and a sentence when there are none.
 * Each cell carries its column's name, which the narrow layout shows beside the value.
 * columns: [{ label, render(item), numeric?, sort? }]
 */
export function Table({ caption, columns, rows, empty, rowKey, sort, onSort, hideCaption }) {
  return html`<div class="table-wrap">
    <table class="data">
      <caption class=${hideCaption ? 'visually-hidden' : ''}>${caption}</caption>
      <thead><tr>${columns.map(
        (column) => html`<th scope="col" class=${column.numeric ? 'numeric' : ''} aria-sort=${sortState(column, sort)}>
        ${column.sort && onSort ? html`<button type="button" class="sort" onClick=${() => onSort(column.sort)}>${column.label}<span aria-hidden="true">${sortMark(column, sort)}</span></button>` : column.label}
      </th>`,
      )}</tr></thead>
      <tbody>
        ${
          rows.length === 0
            ? html`<tr class="empty"><td colspan=${columns.length}>${empty}</td></tr>`
            : rows.map(
                (row, index) =>
                  html`<tr key=${rowKey ? rowKey(row) : index}>${columns.map((column) => html`<td data-label=${column.label} class=${column.numeric ? 'numeric' : ''}><div class="cell">${column.render(row)}</div></td>`)}</tr>`,
              )
        }
      </tbody>
    </table>
  </div>`;
}

const sortState = (column, sort) => (sort && column.sort === sort.by ? (sort.order === 'desc' ? 'descending' : 'ascending') : undefined);
const sortMark = (column, sort) => (sort && column.sort === sort.by ? (sort.order === 'desc' ? ' ▼' : ' ▲') : '');

/** Previous and next page buttons, with what is shown. */
export const Pager = ({ label, onPrevious, onNext, position }) =>
  onPrevious || onNext
    ? html`<nav class="pager" aria-label=${label}>
        <button type="button" disabled=${!onPrevious} onClick=${onPrevious}>Previous page</button>
        <span>${position}</span>
        <button type="button" disabled=${!onNext} onClick=${onNext}>Next page</button>
      </nav>`
    : null;

/** A labelled figure on the overview: a name, a value, and a line saying what it means. */
export const Figure = ({ name, value, note, id, tone }) => html`<div class=${`figure${tone ? ` figure-${tone}` : ''}`}>
  <dt>${name}</dt>
  <dd><span class="figure-value" data-figure=${id}>${value}</span>${note ? html`<span class="figure-note">${note}</span>` : null}</dd>
</div>`;

/** Random enough for an idempotency key, and available on plain-HTTP private addresses too (unlike randomUUID). */
export function randomKey(prefix) {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return prefix + Array.from(bytes, (byte) => byte.toString(16).padStart(2, '0')).join('');
}

/** Goes to a route; `replace` keeps the browser history from filling with every filter change. */
export function navigate(hash, replace = false) {
  if (replace) location.replace(hash);
  else location.hash = hash;
}
