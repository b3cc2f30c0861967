// Time-series charts with uPlot: UTC days on the x axis, credits on the y axis, a legend whose
// values follow the cursor, and the same numbers in a table for keyboards and screen readers.
import { useEffect, useRef } from './vendor/hooks.js';
import uPlot from './vendor/uplot.js';
import { credits, html, Table } from './ui.js';

export const chartRanges = [7, 30, 90];

/** Three radio buttons: the last 7, 30 or 90 days. */
export const RangePicker = ({ name, days, onChange }) => html`<fieldset class="range">
  <legend>Range</legend>
  ${chartRanges.map(
    (count) =>
      html`<label><input type="radio" name=${name} value=${count} checked=${days === count} onChange=${() => onChange(count)} /> ${count} days</label>`,
  )}
</fieldset>`;

const daySeconds = (day) => Date.parse(`${day}T00:00:00Z`) / 1000;
const utc = (seconds) => uPlot.tzDate(new Date(seconds * 1000), 'Etc/UTC');

/**
 * rows: [{day, ...}]; series: [{key, label, color}]; `level` for a value at each day's end (a
 * balance) rather than an amount per day. The chart redraws when rows change and
 * follows its container's width.
 */
export function TimeChart({ title, rows, series, id, level = false }) {
  const box = useRef(null);
  useEffect(() => {
    const element = box.current;
    if (!element || rows.length === 0) return undefined;
    const data = [
      rows.map((row) => daySeconds(row.day)),
      ...series.map((line) => rows.map((row) => (row[line.key] === null ? null : Number(row[line.key])))),
    ];
    const width = () => Math.max(200, Math.floor(element.clientWidth));
    const plot = new uPlot(
      {
        width: width(),
        height: 220,
        tzDate: utc,
        scales: { x: { time: true } },
        series: [
          { label: 'Day', value: (_plot, seconds) => (seconds === null ? '—' : new Date(seconds * 1000).toISOString().slice(0, 10)) },
          ...series.map((line) => ({
            label: line.label,
            stroke: line.color,
            fill: line.fill,
            width: 2,
            points: { show: rows.length <= 31 },
            value: (_plot, value) => (value === null || value === undefined ? '—' : credits(Math.round(value))),
          })),
        ],
        axes: [{ space: 60 }, { size: 64, values: (_plot, ticks) => ticks.map((tick) => compact(tick)) }],
        legend: { show: true, live: true },
        cursor: { drag: { x: false, y: false } },
      },
      data,
      element,
    );
    const observer = new ResizeObserver(() => plot.setSize({ width: width(), height: 220 }));
    observer.observe(element);
    return () => {
      observer.disconnect();
      plot.destroy();
    };
  }, [rows, series]);
  return html`<figure class="chart" id=${id}>
    <figcaption>${title}</figcaption>
    <div class="chart-box" ref=${box} role="img" aria-label=${`${title}: ${summary(rows, series, level)}`}></div>
    <details>
      <summary>The numbers, day by day</summary>
      <${Table}
        caption=${title}
        hideCaption=${true}
        columns=${[{ label: 'Day', render: (row) => row.day }, ...series.map((line) => ({ label: line.label, numeric: true, render: (row) => credits(row[line.key]) }))]}
        rows=${rows.slice().reverse()}
        empty="No days to show."
        rowKey=${(row) => row.day}
      />
    </details>
  </figure>`;
}

const compact = (value) => {
  const size = Math.abs(value);
  if (size >= 1e9) return `${value / 1e9}G`;
  if (size >= 1e6) return `${value / 1e6}M`;
  if (size >= 1e4) return `${value / 1e3}k`;
  return String(value);
};

/** What the chart shows, in one sentence: totals of flows, or the last value of a level (a balance). */
function summary(rows, series, level) {
  if (rows.length === 0) return 'no data';
  const range = `${rows[0].day} to ${rows[rows.length - 1].day}; `;
  if (level) return range + series.map((line) => `${line.label} ${credits(rows[rows.length - 1][line.key])} at the end`).join(', ');
  return (
    range +
    series.map((line) => `${line.label} ${credits(rows.reduce((sum, row) => sum + BigInt(row[line.key] ?? 0), 0n))} in total`).join(', ')
  );
}
