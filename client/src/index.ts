/**
 * @tally/client: the typed client of Tally, the self-hosted credits ledger and Stripe billing
 * engine. Fetch only (Node 18+, Bun, Deno, edge runtimes, browsers).
 */
export * from './client.js';
export * from './errors.js';
export { verifyEvent, type DeliveredEvent, type EventHeaders } from './verify-event.js';
export { defaultRetryOptions, type FetchFunction, type RetryOptions, type RetryPolicy } from './transport.js';
export type { components, paths } from './openapi-types.js';
