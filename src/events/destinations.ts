import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';

/**
 * Where event deliveries may go. An endpoint URL is chosen by whoever holds the admin key, and
 * Tally then sends POSTs from inside the network it runs in: without a rule, an endpoint on a
 * private, loopback or link-local address (a cloud's metadata service at 169.254.169.254, a
 * database's admin port) would be reached from there, and its failures would map the network.
 * So the host of an endpoint must be public: a literal address is checked as it is, a name is
 * resolved and every address it resolves to is checked. The check runs when the endpoint is
 * registered and again at each delivery, and the delivery connects to the very address it
 * checked, so a name that resolves to a public address for the check and to a private one a
 * moment later (DNS rebinding) gets nothing sent to the private one.
 *
 * Literal addresses arrive already normalized by the WHATWG URL parser, which reads every
 * spelling a browser would (`0177.0.0.1`, `2130706433`, `0x7f.1`, `127.1` are all 127.0.0.1),
 * so the check sees the address a connection would reach. IPv6 forms that embed an IPv4 address
 * (IPv4-mapped, NAT64's well-known prefix, 6to4) are judged by the address they embed.
 */
export type Resolver = (hostname: string) => Promise<string[]>;

export interface DestinationPolicy {
  /** TALLY_EVENTS_ALLOW_PRIVATE: private and loopback hosts allowed, and plain http to loopback (development). */
  allowPrivate: boolean;
  /** Every address a name resolves to (tests hand in their own; never a real private target). */
  resolve: Resolver;
}

export type AddressScope = 'public' | 'loopback' | 'private';

/** The operating system's resolver (as a connection would use it), every address of the name. */
export const systemResolver: Resolver = async (hostname) =>
  (await lookup(hostname, { all: true, verbatim: true })).map((entry) => entry.address);

export const defaultDestinationPolicy: DestinationPolicy = { allowPrivate: false, resolve: systemResolver };

/** Why a destination is refused, in words a caller may read (they name no port and no answer). */
export class DestinationRefused extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'DestinationRefused';
  }
}

/** The name could not be resolved (no such name, no answer): nothing was sent. */
export class DestinationUnresolved extends Error {
  constructor(hostname: string, options?: ErrorOptions) {
    super(`${hostname} did not resolve`, options);
    this.name = 'DestinationUnresolved';
  }
}

/** [first address, prefix length] of the IPv4 blocks that are not the public internet. */
const ipv4Blocks: [string, number, AddressScope][] = [
  ['0.0.0.0', 8, 'private'], // "this network", unspecified
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'private'], // carrier-grade NAT
  ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'private'], // link-local, cloud metadata services
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'private'], // IETF protocol assignments
  ['192.0.2.0', 24, 'private'], // documentation
  ['192.88.99.0', 24, 'private'], // 6to4 relay anycast
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'private'], // benchmarking
  ['198.51.100.0', 24, 'private'], // documentation
  ['203.0.113.0', 24, 'private'], // documentation
  ['224.0.0.0', 4, 'private'], // multicast
  ['240.0.0.0', 4, 'private'], // reserved, broadcast
];

function ipv4Number(address: string): number | undefined {
  const parts = address.split('.');
  if (parts.length !== 4 || !parts.every((part) => /^\d{1,3}$/.test(part) && Number(part) <= 255)) return undefined;
  return parts.reduce((total, part) => total * 256 + Number(part), 0);
}

function ipv4Scope(value: number): AddressScope {
  for (const [first, prefix, scope] of ipv4Blocks) {
    const size = 2 ** (32 - prefix);
    const start = ipv4Number(first) ?? 0;
    if (value >= start && value < start + size) return scope;
  }
  return 'public';
}

/** The eight 16-bit groups of an IPv6 address (`::` expanded, a trailing dotted IPv4 read), or undefined. */
function ipv6Groups(address: string): number[] | undefined {
  let text = address.toLowerCase().replace(/%.*$/, '');
  const dotted = /(\d{1,3}(?:\.\d{1,3}){3})$/.exec(text);
  if (dotted?.[1] !== undefined) {
    const value = ipv4Number(dotted[1]);
    if (value === undefined) return undefined;
    text = `${text.slice(0, dotted.index)}${Math.floor(value / 65536).toString(16)}:${(value % 65536).toString(16)}`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const read = (half: string | undefined): number[] | undefined => {
    if (half === undefined || half === '') return [];
    const groups = half.split(':');
    if (!groups.every((group) => /^[0-9a-f]{1,4}$/.test(group))) return undefined;
    return groups.map((group) => Number.parseInt(group, 16));
  };
  const head = read(halves[0]);
  const tail = read(halves[1]);
  if (head === undefined || tail === undefined) return undefined;
  if (halves.length === 1) return head.length === 8 ? head : undefined;
  const missing = 8 - head.length - tail.length;
  return missing < 1 ? undefined : [...head, ...new Array<number>(missing).fill(0), ...tail];
}

const embeddedIpv4 = (high: number, low: number): number => high * 65536 + low;

function ipv6Scope(groups: number[]): AddressScope {
  const [g0 = 0, g1 = 0, g2 = 0, g3 = 0, g4 = 0, g5 = 0, g6 = 0, g7 = 0] = groups;
  const zeroThrough = (last: number) => groups.slice(0, last + 1).every((group) => group === 0);
  if (zeroThrough(6) && g7 === 0) return 'private'; // :: unspecified
  if (zeroThrough(6) && g7 === 1) return 'loopback'; // ::1
  if (zeroThrough(4) && g5 === 0xffff) return ipv4Scope(embeddedIpv4(g6, g7)); // ::ffff:a.b.c.d, IPv4-mapped
  if (zeroThrough(5)) return 'private'; // ::a.b.c.d, IPv4-compatible (deprecated)
  if (g0 === 0x64 && g1 === 0xff9b && g2 === 0 && g3 === 0 && g4 === 0 && g5 === 0) return ipv4Scope(embeddedIpv4(g6, g7)); // NAT64
  if (g0 === 0x64 && g1 === 0xff9b) return 'private'; // NAT64, local use
  if (g0 === 0x2002) return ipv4Scope(embeddedIpv4(g1, g2)); // 6to4
  if (g0 === 0x2001 && g1 === 0) return 'private'; // Teredo: the IPv4 inside is obscured
  if (g0 === 0x2001 && g1 === 0xdb8) return 'private'; // documentation
  if (g0 === 0x100 && g1 === 0 && g2 === 0 && g3 === 0) return 'private'; // discard-only
  if ((g0 & 0xfe00) === 0xfc00) return 'private'; // unique-local fc00::/7
  if ((g0 & 0xffc0) === 0xfe80 || (g0 & 0xffc0) === 0xfec0) return 'private'; // link-local, site-local
  if ((g0 & 0xff00) === 0xff00) return 'private'; // multicast
  return 'public';
}

/** Whether an address (IPv4 or IPv6, without brackets) is public, loopback or otherwise not public. */
export function addressScope(address: string): AddressScope {
  const version = isIP(address.replace(/%.*$/, ''));
  if (version === 4) return ipv4Scope(ipv4Number(address) ?? 0);
  if (version === 6) {
    const groups = ipv6Groups(address);
    return groups === undefined ? 'private' : ipv6Scope(groups);
  }
  // Not an address at all: nothing to connect to, so never public.
  return 'private';
}

/** The URL's host as an address or a name: IPv6 literals lose their brackets. */
export const bareHostname = (url: URL): string => url.hostname.replace(/^\[(.*)\]$/, '$1');

/**
 * Resolves the URL's host (a literal address stands for itself) and checks every address
 * against the policy; answers the address to connect to. Throws DestinationRefused for a host
 * that is or resolves to an address the policy refuses (one such address among public ones is
 * enough: the connection might use it), and DestinationUnresolved for a name without addresses.
 */
export async function checkDestination(url: URL, policy: DestinationPolicy): Promise<string> {
  const hostname = bareHostname(url);
  const plainHttpRefused = new DestinationRefused('must be https (plain http only to this machine, with TALLY_EVENTS_ALLOW_PRIVATE=1)');
  if (url.protocol === 'http:' && !policy.allowPrivate) throw plainHttpRefused;
  let addresses: string[];
  if (isIP(hostname) !== 0) addresses = [hostname];
  else {
    try {
      addresses = await policy.resolve(hostname);
    } catch (error) {
      throw new DestinationUnresolved(hostname, { cause: error });
    }
    if (addresses.length === 0) throw new DestinationUnresolved(hostname);
  }
  const scopes = addresses.map(addressScope);
  if (url.protocol === 'http:') {
    if (!scopes.every((scope) => scope === 'loopback')) throw plainHttpRefused;
  } else if (!policy.allowPrivate && scopes.some((scope) => scope !== 'public')) {
    throw new DestinationRefused(
      'the host is or resolves to a loopback, private, link-local or unique-local address (TALLY_EVENTS_ALLOW_PRIVATE=1 allows them in development)',
    );
  }
  const first = addresses[0];
  if (first === undefined) throw new DestinationUnresolved(hostname);
  return first;
}
