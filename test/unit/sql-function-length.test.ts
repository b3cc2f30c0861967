import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { readFunctionFiles } from '../../src/db/migrate.js';

// STYLE.md asks for functions short enough to read at once, about 70 lines; this keeps the SQL
// functions of db/functions/ to it. A body is the text between a function's dollar-quote
// delimiters ($$ or $tag$), counted from its first line with text to its last. There is no list
// of exceptions: a longer function is split into named steps (as tally_usage_batch is).
const bodyLinesMax = 70;

interface FunctionBody {
  name: string;
  lines: number;
}

/** Every `create function` of the SQL text, with the number of lines of its body. */
function functionBodies(sql: string): { found: number; bodies: FunctionBody[] } {
  // Comments blanked (to the same length, so that offsets hold): a `$$` in one is no delimiter.
  const text = sql.replace(/--.*$/gm, (comment) => ' '.repeat(comment.length));
  const creates = [...text.matchAll(/create\s+(?:or\s+replace\s+)?function\s+([\w.]+)/gi)];
  const bodies = creates.flatMap((create) => {
    const opening = /\$(\w*)\$/g;
    opening.lastIndex = create.index ?? 0;
    const open = opening.exec(text);
    if (open === null) return [];
    const start = open.index + open[0].length;
    const end = text.indexOf(open[0], start);
    if (end < 0) return [];
    return [{ name: create[1] ?? '', lines: sql.slice(start, end).trim().split('\n').length }];
  });
  return { found: creates.length, bodies };
}

describe('SQL function length', () => {
  it('counts the lines of each body between its delimiters, whatever the tag', () => {
    // Proves the counter on known text, so that the rule below cannot pass by counting nothing.
    const lines = (count: number) => Array.from({ length: count }, (_, index) => `  select ${index};`).join('\n');
    const sql = [
      '-- a comment with $$ in it',
      `create or replace function short() returns void language sql as $$\n${lines(70)}\n$$;`,
      `create function long(p integer) returns void language plpgsql as $body$\nbegin\n${lines(70)}\nend $body$;`,
      'create or replace function one() returns int language sql as $$ select 1 $$;',
    ].join('\n');
    assert.deepEqual(functionBodies(sql), {
      found: 3,
      bodies: [
        { name: 'short', lines: 70 },
        { name: 'long', lines: 72 },
        { name: 'one', lines: 1 },
      ],
    });
  });

  it(`keeps every function of db/functions/ at ${bodyLinesMax} lines or fewer`, () => {
    const files = readFunctionFiles();
    assert.ok(files.length > 0, 'no function files found');
    const long: string[] = [];
    let counted = 0;
    for (const file of files) {
      const { found, bodies } = functionBodies(file.sql);
      assert.equal(bodies.length, found, `${file.name}: a function whose body the counter could not find`);
      counted += bodies.length;
      for (const body of bodies) if (body.lines > bodyLinesMax) long.push(`${file.name} ${body.name}: ${body.lines} lines`);
    }
    assert.ok(counted > 50, `only ${counted} functions found`);
    assert.deepEqual(long, [], `split these into named steps of at most ${bodyLinesMax} lines`);
  });
});
