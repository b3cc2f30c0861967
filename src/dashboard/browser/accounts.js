// Accounts: search by the start of an id, an email or a Stripe customer id; sort by any column
// with a button in its header; page through. The search, sort and page live in the address, so
// a reload or a shared link shows the same list. The viewer key reads emails and names masked,
// so it searches ids and Stripe customers only, and the email column does not sort.
import { useEffect, useState } from './vendor/hooks.js';
import { query } from './api.js';
import { Badge, credits, html, Id, Loading, navigate, Pager, Problem, Table, Time, useLoad } from './ui.js';

const pageSize = 50;

export const accountHref = (id) => `#/accounts/${encodeURIComponent(id)}`;

export function Accounts({ api, params, canAct }) {
  const search = params.get('search') || '';
  // A shared link sorted by email opens sorted by id for the viewer key, which may not sort by email.
  const sort = !canAct && params.get('sort') === 'email' ? 'id' : params.get('sort') || 'id';
  const order = params.get('order') === 'desc' ? 'desc' : 'asc';
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  const [typed, setTyped] = useState(search);
  const list = useLoad(
    () => api.get(`/v1/admin/accounts/search${query({ search, sort, order, offset, limit: pageSize })}`),
    [api, search, sort, order, offset],
  );
  const go = (changes) => navigate(`#/accounts${query({ search, sort, order, offset: 0, ...changes })}`, true);

  // Typing searches after a short pause; Enter searches at once (and cancels the pause, so a
  // page turned meanwhile is not sent back to the first).
  useEffect(() => {
    if (typed.trim() === search) return undefined;
    const timer = setTimeout(() => go({ search: typed.trim() }), 350);
    return () => clearTimeout(timer);
  }, [typed, search]);

  const onSort = (column) =>
    go({ sort: column, order: column === sort && order === 'asc' ? 'desc' : column === sort ? 'asc' : defaultOrder(column) });
  const accounts = list.data ? list.data.accounts : [];
  const columns = [
    {
      label: 'Account',
      sort: 'id',
      render: (account) =>
        html`<${Id} value=${account.id} href=${accountHref(account.id)} />${account.name ? html`<div class="sub"><span class="clip" title=${account.name}>${account.name}</span></div>` : null}`,
    },
    {
      label: 'Email',
      sort: canAct ? 'email' : undefined,
      render: (account) =>
        account.email ? html`<span class="clip" title=${account.email}>${account.email}</span>` : html`<span class="muted">—</span>`,
    },
    { label: 'Stripe customer', render: (account) => html`<${Id} value=${account.stripe_customer_id} />` },
    { label: 'Available', sort: 'available', numeric: true, render: (account) => credits(account.available) },
    { label: 'Held', sort: 'held', numeric: true, render: (account) => credits(account.held) },
    { label: 'Debt', sort: 'debt', numeric: true, render: (account) => credits(account.debt) },
    {
      label: 'Subscription',
      render: (account) =>
        html`${account.subscription_status ? html`<${Badge} value=${account.subscription_status} />` : html`<span class="muted">none</span>`}${account.flagged ? html` <${Badge} value="flagged" />` : null}`,
    },
    { label: 'Updated', sort: 'updated_at', render: (account) => html`<${Time} value=${account.updated_at} />` },
  ];
  const searched = canAct ? 'id, email or Stripe customer' : 'id or Stripe customer';
  const empty = search
    ? `No account's ${searched} starts with “${search}”. Check the spelling, or search with fewer characters.`
    : 'There are no accounts yet. They appear when your app creates them (PUT /v1/accounts/{id}) or a Stripe checkout links one.';
  return html`<section aria-labelledby="accounts-title">
    <div class="page-head"><h1 id="accounts-title">Accounts</h1></div>
    <form class="filters" role="search" onSubmit=${(event) => {
      event.preventDefault();
      go({ search: typed.trim() });
    }}>
      <label for="account-search">${canAct ? 'Search by the start of an account id, an email or a Stripe customer id' : 'Search by the start of an account id or a Stripe customer id'}</label>
      <div class="row">
        <input id="account-search" type="search" autocomplete="off" spellcheck="false" value=${typed} onInput=${(event) => setTyped(event.currentTarget.value)} />
        <button type="submit">Search</button>
      </div>
    </form>
    <${Problem} error=${list.error} doing="load the accounts" retry=${list.reload} />
    ${
      list.data === undefined && !list.error
        ? html`<${Loading} what="the accounts" />`
        : html`<div id="accounts">
          <${Table} caption=${search ? `Accounts matching “${search}”` : 'All accounts'} columns=${columns} rows=${accounts} empty=${empty} rowKey=${(account) => account.id} sort=${{ by: sort, order }} onSort=${onSort} />
        </div>
        <${Pager}
          label="Account pages"
          position=${accounts.length === 0 ? '' : `Accounts ${offset + 1} to ${offset + accounts.length}`}
          onPrevious=${offset > 0 ? () => go({ offset: Math.max(0, offset - pageSize), search, sort, order }) : undefined}
          onNext=${list.data && list.data.next_offset !== null ? () => go({ offset: list.data.next_offset, search, sort, order }) : undefined}
        />`
    }
  </section>`;
}

// Numbers read best largest first; names and dates in their natural order.
const defaultOrder = (column) => (['available', 'held', 'debt', 'updated_at'].includes(column) ? 'desc' : 'asc');
