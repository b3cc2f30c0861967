import assert from 'node:assert/strict';
import { it } from 'node:test';
import { dashboardAssets, rewriteImports } from '../../src/dashboard/assets.js';

// The dashboard's libraries are served from node_modules; browsers resolve only URLs, so bare
// imports are rewritten to the URLs Tally serves, and one left bare stops the start.

// Proves: a bare import of a served library becomes its URL; relative imports stay as they are.
it('rewrites bare imports to the URLs that serve them', () => {
  const source = 'import{options as n}from"preact";import x from "./local.js";export{n}';
  assert.equal(
    rewriteImports(source, 'hooks', { preact: './preact.js' }),
    'import{options as n}from"./preact.js";import x from "./local.js";export{n}',
  );
});

// Proves: a library importing something Tally does not serve is refused at start, by name.
it('refuses a library whose import would not resolve in a browser', () => {
  assert.throws(
    () => rewriteImports("import { signal } from '@preact/signals';", 'app', { preact: './preact.js' }),
    /imports "@preact\/signals", which is not served/,
  );
});

// Proves: words in comments that look like imports across lines are not taken for imports.
it('leaves text that only looks like an import alone', () => {
  const source = '// the band edge from "a\n// to" the next\nconst from = 1;';
  assert.equal(rewriteImports(source, 'uplot', {}), source);
});

// Proves: every asset the page loads is served with a script or style type, none left bare.
it('serves the page modules and the libraries from the installed packages', () => {
  const urls = dashboardAssets().map((asset) => asset.url);
  for (const url of [
    '/dashboard/app.js',
    '/dashboard/app.css',
    '/dashboard/vendor/preact.js',
    '/dashboard/vendor/hooks.js',
    '/dashboard/vendor/htm.js',
    '/dashboard/vendor/uplot.js',
    '/dashboard/vendor/uplot.css',
  ]) {
    assert.ok(urls.includes(url), url);
  }
  const hooks = dashboardAssets().find((asset) => asset.url === '/dashboard/vendor/hooks.js');
  assert.match(hooks?.body ?? '', /from\s*"\.\/preact\.js"/);
});
