import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * What the dashboard's browser side is made of, read once at start: the page's own modules and
 * style (src/dashboard/browser/, plain ES modules: no build step), and the libraries it uses,
 * served from the installed npm packages (no CDN, so the page works offline and on a private
 * network): preact and its hooks, htm, and uPlot with its style.
 */
export interface Asset {
  url: string;
  body: string;
  contentType: string;
}

const javascript = 'text/javascript; charset=utf-8';
const css = 'text/css; charset=utf-8';
const browserDirectory = fileURLToPath(new URL('./browser/', import.meta.url));
const require = createRequire(import.meta.url);

/**
 * Browsers resolve only URLs, and an import map would be inline script, which the page's
 * Content-Security-Policy forbids; so a library's bare imports ("preact") are rewritten to the
 * URL that serves it. An import left bare would fail in the browser only, so it stops the start.
 */
export function rewriteImports(source: string, name: string, urls: Record<string, string>): string {
  const rewritten = source.replace(
    /\b(from|import)\s*(["'])([@A-Za-z][\w@/.-]*)\2/g,
    (whole, keyword: string, quote: string, specifier: string) => {
      const url = urls[specifier];
      return url === undefined ? whole : `${keyword}${quote}${url}${quote}`;
    },
  );
  const bare = /\b(?:from|import)\s*["']([@A-Za-z][\w@/.-]*)["']/.exec(rewritten);
  if (bare !== null) throw new Error(`dashboard library ${name} imports "${bare[1]}", which is not served`);
  return rewritten;
}

const packageFile = (specifier: string, file?: string): string => {
  const resolved = require.resolve(specifier);
  return file === undefined ? resolved : join(dirname(resolved), file);
};

function vendorAssets(): Asset[] {
  const urls = { preact: './preact.js' };
  const module = (url: string, path: string): Asset => ({
    url,
    body: rewriteImports(readFileSync(path, 'utf8'), url, urls),
    contentType: javascript,
  });
  return [
    module('/dashboard/vendor/preact.js', packageFile('preact')),
    module('/dashboard/vendor/hooks.js', packageFile('preact/hooks')),
    // htm's CommonJS entry sits beside its ES module build.
    module('/dashboard/vendor/htm.js', packageFile('htm', 'htm.mjs')),
    module('/dashboard/vendor/uplot.js', packageFile('uplot/dist/uPlot.esm.js')),
    { url: '/dashboard/vendor/uplot.css', body: readFileSync(packageFile('uplot/dist/uPlot.min.css'), 'utf8'), contentType: css },
  ];
}

function ownAssets(): Asset[] {
  return readdirSync(browserDirectory)
    .filter((name) => name.endsWith('.js') || name.endsWith('.css'))
    .sort()
    .map((name) => ({
      url: `/dashboard/${name}`,
      body: readFileSync(join(browserDirectory, name), 'utf8'),
      contentType: name.endsWith('.js') ? javascript : css,
    }));
}

export function dashboardAssets(): Asset[] {
  return [...ownAssets(), ...vendorAssets()];
}

/**
 * The page is a shell: the script renders everything, and holds the key it is given in this
 * tab's sessionStorage only. Nothing inline, so the policy below can forbid inline script.
 */
export const dashboardHtml = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tally dashboard</title>
<link rel="stylesheet" href="/dashboard/vendor/uplot.css">
<link rel="stylesheet" href="/dashboard/app.css">
<script type="module" src="/dashboard/app.js"></script>
</head>
<body>
<div id="root"><p class="boot">Loading the Tally dashboard. It asks for the admin key or the viewer key.</p></div>
<noscript><p class="boot">The dashboard needs JavaScript; the same data is in the admin API (see /docs).</p></noscript>
</body>
</html>
`;

/**
 * No inline script, nothing from elsewhere, never framed (clickjacking). Styles set through the
 * DOM (the chart's sizes) are not inline markup and stay allowed; a `style` attribute or an
 * event handler smuggled into data never reaches markup, because the page renders data as text.
 */
export const dashboardSecurityPolicy =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";
