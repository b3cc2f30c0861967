import type { Caller } from './auth.js';

/**
 * What the viewer key reads in place of personal data (SPEC: support staff and finance read
 * balances, not people). An email keeps the first character of each side of its `@` and its
 * top-level domain, a name its first character: enough to tell two accounts apart on a call,
 * not enough to learn who they are. An endpoint URL keeps its scheme and host: its path and
 * query often carry a token.
 */
export function maskEmail(email: string): string {
  const at = email.lastIndexOf('@');
  if (at < 1) return '***';
  const domain = email.slice(at + 1);
  const dot = domain.lastIndexOf('.');
  const topLevel = dot > 0 ? domain.slice(dot) : '';
  return `${Array.from(email)[0] ?? ''}***@${Array.from(domain)[0] ?? ''}***${topLevel}`;
}

export const maskName = (name: string): string => `${Array.from(name)[0] ?? ''}***`;

export function maskEndpointUrl(url: string): string {
  if (!URL.canParse(url)) return '***';
  const parsed = new URL(url);
  return `${parsed.protocol}//${parsed.host}/***`;
}

/** A record with an `email` and a `name` (an account, a search row): masked for the viewer key, as it is for others. */
export function maskPerson<T extends object>(caller: Caller, record: T): T {
  if (caller !== 'viewer') return record;
  const masked = { ...record } as Record<string, unknown>;
  if (typeof masked.email === 'string') masked.email = maskEmail(masked.email);
  if (typeof masked.name === 'string') masked.name = maskName(masked.name);
  return masked as T;
}
