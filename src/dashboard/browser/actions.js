// An operator's actions, shown only with the admin key: grant credits, adjust the balance, void
// a hold, replay a webhook event. Grants and adjustments go through the same audited admin API
// as any other client (the reason is stored with the entry and in the audit trail), and each
// is confirmed first. A confirmation keeps its idempotency key, so sending it twice (a double
// click, a retry after a timeout) grants once.
import { useEffect, useRef, useState } from './vendor/hooks.js';
import { path } from './api.js';
import { credits, html, Problem, randomKey, signed } from './ui.js';

/** "Are you sure?" with the action in words; focus moves to it so the keyboard can answer. */
function Confirm({ id, words, confirmLabel, busy, onConfirm, onCancel }) {
  const button = useRef(null);
  useEffect(() => button.current?.focus(), []);
  return html`<div class="confirm" role="group" aria-labelledby=${`${id}-words`} id=${id}>
    <p id=${`${id}-words`}>${words}</p>
    <button type="button" class="primary" ref=${button} disabled=${busy} onClick=${onConfirm}>${busy ? 'Sending…' : confirmLabel}</button>
    <button type="button" disabled=${busy} onClick=${onCancel}>Cancel</button>
  </div>`;
}

const wholeNumber = /^[-+]?\d+$/;

/** Sends a confirmed action; remembers its outcome and its failure. */
function useAction(onDone) {
  const [pending, setPending] = useState(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [done, setDone] = useState('');
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      const message = await pending.send();
      setPending(null);
      setDone(message);
      onDone();
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  const ask = (action) => {
    setDone('');
    setError(null);
    setPending(action);
  };
  return { pending, busy, error, done, ask, confirm, cancel: () => setPending(null) };
}

function GrantForm({ api, accountId, onDone }) {
  const [amount, setAmount] = useState('');
  const [source, setSource] = useState('promo');
  const [reason, setReason] = useState('');
  const [expires, setExpires] = useState('');
  const [invalid, setInvalid] = useState('');
  const action = useAction(onDone);
  const submit = (event) => {
    event.preventDefault();
    const text = amount.trim();
    if (!wholeNumber.test(text) || BigInt(text) <= 0n) return setInvalid('Enter the credits to grant as a whole number above 0.');
    if (reason.trim() === '') return setInvalid('Enter a reason: it is kept with the grant and in the audit trail.');
    const expiresAt = expires === '' ? undefined : new Date(expires);
    if (expiresAt && (Number.isNaN(expiresAt.getTime()) || expiresAt.getTime() <= Date.now()))
      return setInvalid('Enter an expiry in the future, or leave it empty for credits that never expire.');
    setInvalid('');
    const body = {
      amount: Number(text),
      source,
      reason: reason.trim(),
      idempotency_key: randomKey('dashboard-grant-'),
      ...(expiresAt ? { expires_at: expiresAt.toISOString() } : {}),
    };
    action.ask({
      words: `Grant ${credits(text)} ${source} credits to ${accountId}, ${expiresAt ? `expiring ${expiresAt.toISOString().replace('T', ' ').slice(0, 16)} UTC` : 'never expiring'}, for the reason “${body.reason}”?`,
      send: async () => {
        const grant = await api.post(path('/v1/accounts', accountId, 'grants'), body);
        setAmount('');
        setReason('');
        setExpires('');
        return `Granted ${credits(grant.amount)} credits (${grant.id}).`;
      },
    });
  };
  return html`<form class="action-form" id="grant-form" onSubmit=${submit} aria-labelledby="grant-title">
    <h3 id="grant-title">Grant credits</h3>
    <label for="grant-amount">Credits</label>
    <input id="grant-amount" inputmode="numeric" autocomplete="off" value=${amount} onInput=${(event) => setAmount(event.currentTarget.value)} aria-required="true" />
    <label for="grant-source">Source</label>
    <select id="grant-source" value=${source} onChange=${(event) => setSource(event.currentTarget.value)}>
      <option value="promo">promo (a gift or goodwill)</option>
      <option value="admin">admin (a correction by an operator)</option>
    </select>
    <label for="grant-expires">Expires at (your local time; empty: never)</label>
    <input id="grant-expires" type="datetime-local" value=${expires} onInput=${(event) => setExpires(event.currentTarget.value)} />
    <label for="grant-reason">Reason (required, kept in the ledger and the audit trail)</label>
    <textarea id="grant-reason" rows="2" maxlength="500" value=${reason} onInput=${(event) => setReason(event.currentTarget.value)} aria-required="true"></textarea>
    <button type="submit" disabled=${action.pending !== null}>Grant…</button>
    ${invalid ? html`<p class="problem" role="alert">${invalid}</p>` : null}
    ${action.pending ? html`<${Confirm} id="grant-confirm" words=${action.pending.words} confirmLabel="Confirm grant" busy=${action.busy} onConfirm=${action.confirm} onCancel=${action.cancel} />` : null}
    <${Problem} error=${action.error} doing="grant the credits" />
    ${action.done ? html`<p class="done" role="status">${action.done}</p>` : null}
  </form>`;
}

function AdjustForm({ api, accountId, onDone }) {
  const [amount, setAmount] = useState('');
  const [reason, setReason] = useState('');
  const [invalid, setInvalid] = useState('');
  const action = useAction(onDone);
  const submit = (event) => {
    event.preventDefault();
    const text = amount.trim();
    if (!wholeNumber.test(text) || BigInt(text) === 0n)
      return setInvalid('Enter a whole number of credits other than 0: positive adds, negative takes away.');
    if (reason.trim() === '') return setInvalid('Enter a reason: it is kept with the entry and in the audit trail.');
    setInvalid('');
    const body = { amount: Number(text), reason: reason.trim(), idempotency_key: randomKey('dashboard-adjust-') };
    action.ask({
      words: `${BigInt(text) > 0n ? 'Add' : 'Take away'} ${credits(BigInt(text) < 0n ? -BigInt(text) : BigInt(text))} credits ${BigInt(text) > 0n ? 'to' : 'from'} ${accountId} (${signed(text)}), for the reason “${body.reason}”?`,
      send: async () => {
        const entry = await api.post(path('/v1/accounts', accountId, 'adjustments'), body);
        setAmount('');
        setReason('');
        return `Adjusted by ${signed(entry.amount)} credits (${entry.id}); the balance is now ${credits(entry.balance_after)}.`;
      },
    });
  };
  return html`<form class="action-form" id="adjust-form" onSubmit=${submit} aria-labelledby="adjust-title">
    <h3 id="adjust-title">Adjust the balance</h3>
    <label for="adjust-amount">Credits (negative to take away)</label>
    <input id="adjust-amount" inputmode="numeric" autocomplete="off" value=${amount} onInput=${(event) => setAmount(event.currentTarget.value)} aria-required="true" />
    <label for="adjust-reason">Reason (required, kept in the ledger and the audit trail)</label>
    <textarea id="adjust-reason" rows="2" maxlength="500" value=${reason} onInput=${(event) => setReason(event.currentTarget.value)} aria-required="true"></textarea>
    <button type="submit" disabled=${action.pending !== null}>Adjust…</button>
    ${invalid ? html`<p class="problem" role="alert">${invalid}</p>` : null}
    ${action.pending ? html`<${Confirm} id="adjust-confirm" words=${action.pending.words} confirmLabel="Confirm adjustment" busy=${action.busy} onConfirm=${action.confirm} onCancel=${action.cancel} />` : null}
    <${Problem} error=${action.error} doing="adjust the balance" />
    ${action.done ? html`<p class="done" role="status">${action.done}</p>` : null}
  </form>`;
}

export const AccountActions = ({
  api,
  accountId,
  onDone,
}) => html`<section class="panel" aria-labelledby="actions-title" id="account-actions">
  <h2 id="actions-title">Actions</h2>
  <div class="actions-grid">
    <${GrantForm} api=${api} accountId=${accountId} onDone=${onDone} />
    <${AdjustForm} api=${api} accountId=${accountId} onDone=${onDone} />
  </div>
</section>`;

export function VoidHold({ api, hold, onDone }) {
  const action = useAction(onDone);
  const id = `void-${hold.id}`;
  return html`<div class="row-action">
    ${
      action.pending
        ? html`<${Confirm} id=${id} words=${`Void ${hold.id}? Its ${credits(hold.amount)} credits become available again; the app can no longer capture it.`} confirmLabel="Confirm void" busy=${action.busy} onConfirm=${action.confirm} onCancel=${action.cancel} />`
        : html`<button type="button" class="void" aria-label=${`Void ${hold.id}`} onClick=${() =>
            action.ask({
              send: async () => {
                await api.post(path('/v1/holds', hold.id, 'void'));
                return 'Voided.';
              },
            })}>Void…</button>`
    }
    <${Problem} error=${action.error} doing="void the hold" />
  </div>`;
}

/** Replays a stored Stripe event (its effects stay exactly once) and says what happened. */
export function ReplayButton({ api, eventId, onDone }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [outcome, setOutcome] = useState('');
  const replay = async () => {
    setBusy(true);
    setError(null);
    try {
      const result = await api.post(path('/v1/admin/webhook-events', eventId, 'replay'));
      const words = `Replayed ${eventId}: ${String(result.outcome).replace(/_/g, ' ')}.`;
      setOutcome(words);
      onDone(words);
    } catch (failure) {
      setError(failure);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="row-action">
    <button type="button" class="replay" data-replay=${eventId} aria-label=${`Replay ${eventId}`} disabled=${busy} onClick=${replay}>${busy ? 'Replaying…' : 'Replay'}</button>
    ${outcome ? html`<span class="done" role="status">${outcome}</span>` : null}
    <${Problem} error=${error} doing="replay the event" />
  </div>`;
}
