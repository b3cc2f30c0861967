import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { addressScope, checkDestination, type DestinationPolicy } from '../../src/events/destinations.js';

// Which addresses an event endpoint may reach: every block that is not the public internet is
// refused, in every spelling (IPv4-mapped, NAT64 and 6to4 forms judged by the IPv4 inside),
// and the spellings a URL parser reads as loopback never pass as names.
describe('addressScope', () => {
  it('calls loopback, private, link-local, unique-local, unspecified and reserved addresses not public', () => {
    const expected: Record<string, string> = {
      '127.0.0.1': 'loopback',
      '127.255.255.254': 'loopback',
      '::1': 'loopback',
      '0:0:0:0:0:0:0:1': 'loopback',
      '::ffff:127.0.0.1': 'loopback',
      '::ffff:7f00:1': 'loopback',
      '0.0.0.0': 'private',
      '::': 'private',
      '10.1.2.3': 'private',
      '172.16.0.1': 'private',
      '172.31.255.255': 'private',
      '192.168.0.10': 'private',
      '100.64.0.1': 'private',
      '100.127.255.255': 'private',
      '169.254.169.254': 'private',
      '::ffff:169.254.169.254': 'private',
      '::ffff:a9fe:a9fe': 'private',
      '64:ff9b::a9fe:a9fe': 'private',
      '2002:c0a8:0101::1': 'private',
      '::10.0.0.1': 'private',
      '2001::1': 'private',
      'fd00::1': 'private',
      'fc00::': 'private',
      'fe80::1': 'private',
      'fe80::1%eth0': 'private',
      'ff02::1': 'private',
      '224.0.0.1': 'private',
      '255.255.255.255': 'private',
      '198.18.0.1': 'private',
      'not-an-address': 'private',
      '8.8.8.8': 'public',
      '172.32.0.1': 'public',
      '100.128.0.1': 'public',
      '93.184.215.14': 'public',
      '2606:4700::1111': 'public',
      '::ffff:8.8.8.8': 'public',
      '64:ff9b::808:808': 'public',
    };
    for (const [address, scope] of Object.entries(expected)) assert.equal(addressScope(address), scope, address);
  });
});

describe('checkDestination', () => {
  const resolve = async (hostname: string) => (hostname === 'public.test' ? ['93.184.215.14'] : ['127.0.0.1']);
  const strict: DestinationPolicy = { allowPrivate: false, resolve };

  it('reads the spellings a URL parser turns into loopback as loopback, without asking the resolver', async () => {
    let asked = 0;
    const counting: DestinationPolicy = {
      allowPrivate: false,
      resolve: async (name) => {
        asked += 1;
        return resolve(name);
      },
    };
    for (const host of ['0177.0.0.1', '2130706433', '0x7f.1', '127.1', '[::ffff:127.0.0.1]', '[0:0:0:0:0:0:0:1]'])
      await assert.rejects(checkDestination(new URL(`https://${host}/hook`), counting), { name: 'DestinationRefused' }, host);
    assert.equal(asked, 0);
  });

  it('answers the address it checked for a public name, and refuses a name resolving to loopback', async () => {
    assert.equal(await checkDestination(new URL('https://public.test/hook'), strict), '93.184.215.14');
    await assert.rejects(checkDestination(new URL('https://localtest.me/hook'), strict), { name: 'DestinationRefused' });
    await assert.rejects(checkDestination(new URL('https://nowhere.test/hook'), { allowPrivate: false, resolve: async () => [] }), {
      name: 'DestinationUnresolved',
    });
  });
});
