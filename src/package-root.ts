import { fileURLToPath } from 'node:url';

/**
 * The package's root folder (package.json, migrations/, db/). This file sits directly under it
 * both as source (src/package-root.ts, run by tsx) and compiled (dist/package-root.js), so files
 * read at run time that are not compiled, SQL above all, resolve from here: from the root, never
 * relative to a module whose compiled copy lives somewhere else.
 */
export const packageRoot = fileURLToPath(new URL('../', import.meta.url));
