import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { toDomainError } from '../../src/db/errors.js';
import { migrationsDirectory } from '../../src/db/migrate.js';
import { errorStatuses, InvariantError, isErrorCode, TallyError } from '../../src/errors.js';
import { errorCatalog } from '../../src/http/responses.js';

// Every SQL file that can define a function: the numbered migrations, and one file per area
// under db/functions/ where the project keeps them.
const sqlDirectories = [migrationsDirectory, 'db/functions'].filter((directory) => existsSync(directory));

/** The SQL text of every file, without `--` comments (rollback notes quote old code). */
function sqlFiles(): { file: string; sql: string }[] {
  return sqlDirectories.flatMap((directory) =>
    readdirSync(directory)
      .filter((name) => name.endsWith('.sql'))
      .map((name) => ({ file: join(directory, name), sql: readFileSync(join(directory, name), 'utf8').replace(/--.*$/gm, '') })),
  );
}

const matchesIn = (pattern: RegExp): { file: string; match: RegExpMatchArray }[] =>
  sqlFiles().flatMap(({ file, sql }) => [...sql.matchAll(pattern)].map((match) => ({ file, match })));

describe('the error catalog', () => {
  it('is one list: the codes TallyError may carry are the codes the API describes, with the same statuses', () => {
    // Proves at run time what the type of errorCatalog checks at build time.
    assert.deepEqual(
      Object.entries(errorCatalog)
        .map(([code, spec]) => [code, spec.status])
        .sort(),
      Object.entries(errorStatuses).sort(),
    );
  });

  it('has every code the SQL functions answer with tally_error, at the status they answer it with', () => {
    // Calls, not the function's own definition.
    const answered = matchesIn(/(?<!function\s+)tally_error\(\s*('?)([^,')]*)\1/g);
    assert.ok(answered.length > 0, `no tally_error call found in ${sqlDirectories.join(', ')}`);
    for (const { file, match } of answered) {
      assert.equal(match[1], "'", `${file}: tally_error(${match[2]}) must name its code as a literal, so that it can be checked`);
      assert.ok(isErrorCode(match[2]), `${file}: tally_error('${match[2]}') is not in the error catalog (src/errors.ts)`);
    }
    // Where the status is written beside the body, it is the catalog's.
    const withStatus = matchesIn(/'status',\s*(\d{3}),\s*'body',\s*tally_error\(\s*'([a-z_]+)'/g);
    assert.ok(withStatus.length > 0);
    for (const { file, match } of withStatus) {
      const code = match[2] ?? '';
      assert.equal(Number(match[1]), isErrorCode(code) ? errorStatuses[code] : undefined, `${file}: ${code}`);
    }
  });

  it('has the error of every SQLSTATE the SQL functions raise, and every raise names its SQLSTATE', () => {
    // Proves STYLE's rule, raise domain errors with a custom SQLSTATE and never by message:
    // each `raise exception` carries an errcode, and each errcode becomes a TallyError with a
    // catalog code and its status, or a broken invariant (a bug, answered 500 internal_error).
    const raises = matchesIn(/raise\s+exception\b[^;]*;/gi);
    assert.ok(raises.length > 0);
    for (const { file, match } of raises) {
      assert.match(match[0], /errcode\s*=\s*'[0-9A-Z]{5}'/, `${file}: a raise without its SQLSTATE: ${match[0]}`);
    }
    const sqlStates = new Set(raises.map(({ match }) => /errcode\s*=\s*'([0-9A-Z]{5})'/.exec(match[0])?.[1] ?? ''));
    assert.ok(sqlStates.size >= 5, [...sqlStates].join(' '));
    for (const sqlState of sqlStates) {
      const raised = Object.assign(new Error(`raised with ${sqlState}`), { code: sqlState, detail: '1' });
      const mapped = toDomainError(raised);
      if (mapped instanceof InvariantError) continue;
      assert.ok(
        mapped instanceof TallyError,
        `SQLSTATE ${sqlState} is raised by SQL but src/db/errors.ts does not map it to a domain error`,
      );
      assert.ok(isErrorCode(mapped.code), `SQLSTATE ${sqlState}: ${mapped.code} is not in the catalog`);
      assert.equal(mapped.status, errorStatuses[mapped.code], `SQLSTATE ${sqlState}: the status of ${mapped.code}`);
    }
  });

  it('knows a code outside it when it sees one', () => {
    assert.equal(isErrorCode('account_not_found'), true);
    assert.equal(isErrorCode('refused'), false);
    assert.equal(isErrorCode('toString'), false, 'an inherited property is not a code');
    assert.equal(isErrorCode(404), false);
  });
});
