/**
 * `npm run build`, also the `prepare` script, so `npm install` and `npm ci` build by themselves:
 * compiles src/ to dist/ (tsconfig.build.json) from scratch, so nothing of a moved or deleted
 * file is left behind, and copies the dashboard's browser files (plain ES modules, served as they
 * are) beside the compiled module that serves them. dist/ mirrors src/ folder for folder.
 */
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

process.chdir(fileURLToPath(new URL('..', import.meta.url)));

let compiler;
try {
  compiler = createRequire(import.meta.url).resolve('typescript/bin/tsc');
} catch (error) {
  // An install without devDependencies (`npm ci --omit=dev`) runs `prepare` too, with no
  // TypeScript to build with: a dist/ built before (copied from a build stage) is what it runs.
  if (existsSync('dist/cli/tally.js')) {
    console.log('build: TypeScript is not installed (an install without devDependencies); dist/ stays as it was built');
    process.exit(0);
  }
  console.error(`build: TypeScript is not installed (${error.code}) and dist/ holds no build.`);
  console.error('Install with devDependencies (npm ci) once to build dist/, or copy dist/ from a machine that built it.');
  process.exit(1);
}

rmSync('dist', { recursive: true, force: true });
const compiled = spawnSync(process.execPath, [compiler, '-p', 'tsconfig.build.json'], { stdio: 'inherit' });
if (compiled.status !== 0) process.exit(compiled.status ?? 1);
cpSync('src/dashboard/browser', 'dist/dashboard/browser', { recursive: true });
