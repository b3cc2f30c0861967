import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { it } from 'node:test';

// Proves that `npm install` on the oldest Node.js that Tally supports warns of no engine
// mismatch (EBADENGINE): every package in the lock file accepts that version. (cookie@2 and
// content-disposition@3 want Node 22, and @napi-rs/wasm-runtime@1.2, which knip's resolver
// lists for WebAssembly platforms, Node 20.19; package.json's overrides pick versions that do not.)
type Version = [number, number, number];

const parse = (text: string): Version => {
  const [major = 0, minor = 0, patch = 0] = text
    .replace(/^v/, '')
    .split('.')
    .map((part) => (/^[0-9]+$/.test(part) ? Number(part) : 0));
  return [major, minor, patch];
};
const compare = (a: Version, b: Version): number => a[0] - b[0] || a[1] - b[1] || a[2] - b[2];

/** The range forms found in engines fields: `>=X`, `>X`, `<X`, `^X`, `~X`, `X`, `X.x`, joined by spaces and `||`. */
function satisfies(version: Version, range: string): boolean {
  return range.split('||').some((alternative) => {
    const comparators = alternative
      .trim()
      .replace(/(>=|<=|>|<|\^|~)\s+/g, '$1')
      .split(/\s+/)
      .filter(Boolean);
    return comparators.every((comparator) => {
      const [, operator = '', text = ''] = /^(>=|<=|>|<|\^|~|=)?(.*)$/.exec(comparator) ?? [];
      const bound = parse(text);
      const parts = text.split('.').filter((part) => /^[0-9]+$/.test(part)).length;
      switch (operator) {
        case '>=':
          return compare(version, bound) >= 0;
        case '>':
          return compare(version, bound) > 0;
        case '<':
          return compare(version, bound) < 0;
        case '<=':
          return compare(version, bound) <= 0;
        case '^':
          return version[0] === bound[0] && compare(version, bound) >= 0;
        case '~':
          return version[0] === bound[0] && version[1] === bound[1] && compare(version, bound) >= 0;
        default:
          // `20`, `20.x`, `20.6`: the parts given must match.
          return version.slice(0, Math.max(parts, 1)).every((value, index) => value === bound[index]);
      }
    });
  });
}

it('installs only packages that accept the oldest Node.js Tally supports', () => {
  const manifest = JSON.parse(readFileSync('package.json', 'utf8')) as { engines: { node: string } };
  const oldest = /^>=\s*([0-9.]+)$/.exec(manifest.engines.node)?.[1];
  assert.ok(oldest !== undefined, `engines.node is a lower bound: ${manifest.engines.node}`);
  const lock = JSON.parse(readFileSync('package-lock.json', 'utf8')) as {
    packages: Record<string, { version?: string; engines?: { node?: string } | string[] }>;
  };
  const refusing = Object.entries(lock.packages)
    .filter(([path]) => path !== '')
    .flatMap(([path, entry]) => {
      const range = Array.isArray(entry.engines) ? undefined : entry.engines?.node;
      return range === undefined || satisfies(parse(oldest), range)
        ? []
        : [`${path.replace(/^.*node_modules\//, '')}@${entry.version} wants node ${range}`];
    });
  assert.deepEqual(refusing, [], `on Node ${oldest}`);
});
