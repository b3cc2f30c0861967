/**
 * The operators' dashboard: one page, no build step, no external assets. The page itself holds
 * no data; it asks for the admin key (kept in this tab's sessionStorage only) and reads the
 * admin API with it: accounts and balances, an account's grants and ledger, the webhook inbox
 * with replay, alerts, reconciliation runs, the breaker, and credits granted and spent per day.
 */
export const dashboardHtml = String.raw`<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tally dashboard</title>
<link rel="stylesheet" href="/dashboard/app.css">
</head>
<body>
<header>
  <h1>Tally</h1>
  <span id="breaker" class="badge">breaker: ?</span>
  <form id="key-form"><input id="key" type="password" placeholder="admin key" autocomplete="off"><button>Open</button></form>
</header>
<p id="error"></p>
<main>
  <section><h2>Credits granted and spent, last 30 days</h2><svg id="chart" width="100%" height="160" viewBox="0 0 600 160"></svg></section>
  <section><h2>Accounts</h2><input id="search" placeholder="account id starts with"><table id="accounts"></table></section>
  <section id="account-detail"><h2>Account</h2><p>Choose an account.</p></section>
  <section><h2>Webhook inbox</h2>
    <select id="inbox-status"><option value="">all</option><option>failed</option><option>pending</option><option>processed</option><option>ignored</option></select>
    <table id="inbox"></table></section>
  <section><h2>Alerts</h2><table id="alerts"></table></section>
  <section><h2>Reconciliation</h2><button id="reconcile">Run now</button><table id="reconciliations"></table></section>
</main>
<script src="/dashboard/app.js"></script>
</body>
</html>`;

/**
 * The page's style and script are served as files of their own, never inline, so that the
 * Content-Security-Policy can forbid inline script: a name, an email or a Stripe payload that
 * smuggled markup into the page still could not run.
 */
export const dashboardStyle = String.raw`  :root { font-family: system-ui, sans-serif; color: #1b1f24; background: #f6f7f9; }
  body { margin: 0; }
  header { background: #1b1f24; color: #fff; padding: 12px 20px; display: flex; gap: 16px; align-items: center; }
  header h1 { font-size: 18px; margin: 0; }
  main { display: grid; grid-template-columns: repeat(auto-fit, minmax(420px, 1fr)); gap: 16px; padding: 16px; }
  section { background: #fff; border-radius: 8px; padding: 12px 16px; box-shadow: 0 1px 2px #0002; overflow: auto; }
  h2 { font-size: 15px; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; font-size: 13px; }
  th, td { text-align: left; padding: 4px 6px; border-bottom: 1px solid #eee; vertical-align: top; }
  td.number { text-align: right; font-variant-numeric: tabular-nums; }
  .badge { padding: 2px 8px; border-radius: 10px; font-size: 12px; color: #1b1f24; }
  .closed, .processed, .done, .info { background: #d8f5dd; } .open, .failed, .critical { background: #fdd; }
  .half_open, .pending, .warning, .running { background: #fff1c2; } .ignored { background: #eee; }
  button { cursor: pointer; } input { padding: 4px; }
  #key-form { display: flex; gap: 8px; } #error { color: #b00020; padding: 0 20px; }
  svg text { font-size: 10px; fill: #555; }
`;

export const dashboardScript = String.raw`const state = { key: sessionStorage.getItem('tally-admin-key') || '' };
const $ = (id) => document.getElementById(id);
const text = (value) => String(value ?? '').replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { authorization: 'Bearer ' + state.key, 'content-type': 'application/json' } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.code + ': ' + body.error.message : response.status);
  return body;
}
const badge = (value) => '<span class="badge ' + text(value) + '">' + text(value) + '</span>';
const table = (id, headers, rows) => { $(id).innerHTML = '<tr>' + headers.map((h) => '<th>' + h + '</th>').join('') + '</tr>' + rows.join(''); };

async function loadBreaker() {
  const breaker = await api('/v1/admin/stripe-breaker');
  $('breaker').className = 'badge ' + breaker.state;
  $('breaker').textContent = 'Stripe breaker: ' + breaker.state + (breaker.failures ? ' (' + breaker.failures + ' failures)' : '');
}
async function loadChart() {
  const { days } = await api('/v1/admin/credit-history?days=30');
  const max = Math.max(1, ...days.map((d) => Math.max(Number(d.granted), Number(d.spent))));
  const width = 600 / days.length;
  $('chart').innerHTML = days.map((d, i) => {
    const g = (Number(d.granted) / max) * 130, s = (Number(d.spent) / max) * 130;
    return '<rect x="' + (i * width + 1) + '" y="' + (140 - g) + '" width="' + (width / 2 - 1) + '" height="' + g + '" fill="#3b82f6"><title>' + d.day + ' granted ' + d.granted + '</title></rect>'
      + '<rect class="spent" x="' + (i * width + width / 2) + '" y="' + (140 - s) + '" width="' + (width / 2 - 1) + '" height="' + s + '" fill="#f59e0b"><title>' + d.day + ' spent ' + d.spent + '</title></rect>';
  }).join('') + '<text x="0" y="155">' + text(days[0]?.day) + '</text><text x="520" y="155">' + text(days[days.length - 1]?.day) + '</text>'
    + '<text x="0" y="10" fill="#3b82f6">granted</text><text x="60" y="10">spent</text>';
}
async function loadAccounts() {
  const search = $('search').value.trim();
  const { accounts } = await api('/v1/admin/accounts?limit=50' + (search ? '&search=' + encodeURIComponent(search) : ''));
  table('accounts', ['account', 'available', 'held', 'debt', ''], accounts.map((a) =>
    '<tr><td><a href="#" data-account="' + text(a.id) + '">' + text(a.id) + '</a></td><td class="number">' + a.available + '</td><td class="number">' + a.held
    + '</td><td class="number">' + a.debt + '</td><td>' + (a.flagged ? badge('critical') : '') + '</td></tr>'));
}
async function showAccount(id) {
  const account = await api('/v1/accounts/' + encodeURIComponent(id));
  const ledger = await api('/v1/accounts/' + encodeURIComponent(id) + '/ledger?limit=50');
  $('account-detail').innerHTML = '<h2>Account ' + text(account.id) + '</h2>'
    + '<p>available <b>' + account.balance.available + '</b>, held ' + account.balance.held + ', debt ' + account.balance.debt
    + (account.subscription ? ' · subscription ' + text(account.subscription.plan_id) + ' ' + badge(account.subscription.status) : '') + '</p>'
    + '<table id="grants"><tr><th>grant</th><th>source</th><th>amount</th><th>remaining</th><th>expires</th></tr>'
    + account.grants.map((g) => '<tr><td>' + text(g.id) + '</td><td>' + text(g.source) + '</td><td class="number">' + g.amount + '</td><td class="number">' + g.remaining + '</td><td>' + text(g.expires_at || 'never') + '</td></tr>').join('')
    + '</table><table id="ledger"><tr><th>entry</th><th>kind</th><th>amount</th><th>balance after</th><th>actor</th><th>at</th></tr>'
    + ledger.entries.map((e) => '<tr><td>' + text(e.id) + '</td><td>' + text(e.kind) + '</td><td class="number">' + e.amount + '</td><td class="number">' + e.balance_after + '</td><td>' + text(e.actor) + '</td><td>' + text(e.created_at) + '</td></tr>').join('') + '</table>';
}
async function loadInbox() {
  const status = $('inbox-status').value;
  const { events } = await api('/v1/admin/webhook-events?limit=50' + (status ? '&status=' + status : ''));
  table('inbox', ['event', 'type', 'status', 'attempts', 'error', ''], events.map((e) =>
    '<tr><td>' + text(e.id) + '</td><td>' + text(e.type) + '</td><td>' + badge(e.status) + '</td><td class="number">' + e.attempts + '</td><td>' + text(e.last_error || e.ignored_reason)
    + '</td><td><button data-replay="' + text(e.id) + '">Replay</button></td></tr>'));
}
async function loadAlerts() {
  const { alerts } = await api('/v1/admin/alerts?limit=50');
  table('alerts', ['when', 'severity', 'alert', 'count', 'resolved'], alerts.map((a) => '<tr><td>' + text(a.last_at) + '</td><td>' + badge(a.severity) + '</td><td>' + text(a.message) + '</td><td class="number">' + a.count + '</td><td>' + text(a.resolved_at ?? '') + '</td></tr>'));
}
async function loadReconciliations() {
  const { runs } = await api('/v1/admin/reconciliations?limit=10');
  table('reconciliations', ['run', 'started', 'status', 'findings'], runs.map((r) =>
    '<tr><td>' + r.run_id + '</td><td>' + text(r.started_at) + '</td><td>' + badge(r.status) + '</td><td>' + (r.finding_count ?? '')
    + (r.findings || []).slice(0, 5).map((f) => '<div>' + text(f.check) + ' ' + text(f.account_id) + ': ' + text(f.message) + '</div>').join('') + '</td></tr>'));
}
async function refresh() {
  if (!state.key) return;
  try {
    await Promise.all([loadBreaker(), loadChart(), loadAccounts(), loadInbox(), loadAlerts(), loadReconciliations()]);
    $('error').textContent = '';
  } catch (error) { $('error').textContent = String(error.message || error); }
}
$('key-form').addEventListener('submit', (event) => {
  event.preventDefault();
  state.key = $('key').value.trim();
  sessionStorage.setItem('tally-admin-key', state.key);
  refresh();
});
$('search').addEventListener('input', () => loadAccounts().catch((error) => ($('error').textContent = error.message)));
$('inbox-status').addEventListener('change', () => loadInbox().catch((error) => ($('error').textContent = error.message)));
document.addEventListener('click', async (event) => {
  const target = event.target;
  try {
    if (target.dataset.account) { event.preventDefault(); await showAccount(target.dataset.account); }
    if (target.dataset.replay) { const result = await api('/v1/admin/webhook-events/' + encodeURIComponent(target.dataset.replay) + '/replay', { method: 'POST' }); target.textContent = result.outcome; await loadInbox(); }
    if (target.id === 'reconcile') { target.disabled = true; await api('/v1/admin/reconcile', { method: 'POST', body: '{}' }); await loadReconciliations(); await loadAlerts(); target.disabled = false; }
  } catch (error) { $('error').textContent = String(error.message || error); }
});
refresh();
setInterval(refresh, 15000);
`;

/** No inline script or style, nothing from elsewhere, never framed (clickjacking). */
export const dashboardSecurityPolicy = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
