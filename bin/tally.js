#!/usr/bin/env node
// The `tally` command: runs the compiled JavaScript in dist/, which `npm install` builds (the
// `prepare` script); `npm run build` builds it again after a change to src/.
import { existsSync } from 'node:fs';

const entry = new URL('../dist/cli/tally.js', import.meta.url);
if (!existsSync(entry)) {
  console.error('tally: dist/ holds no build. Run `npm run build` (npm install and npm ci build it too).');
  process.exit(1);
}
await import(entry.href);
