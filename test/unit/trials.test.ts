import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ClaimHasher } from '../../src/billing/claim-hasher.js';
import { normalizeEmail } from '../../src/billing/trials.js';

describe('email normalization for trial claims', () => {
  const cases: [string, string | undefined][] = [
    ['Jane.Doe+x@GMail.com', 'janedoe@gmail.com'],
    ['janedoe@googlemail.com', 'janedoe@gmail.com'],
    ['j.a.n.e.d.o.e@gmail.com', 'janedoe@gmail.com'],
    ['John.Smith+promo@Example.com', 'john.smith@example.com'],
    ['UPPER@EXAMPLE.COM', 'upper@example.com'],
    ['  spaced@example.com ', 'spaced@example.com'],
    ['a+b+c@example.com', 'a@example.com'],
    ['+tag@example.com', undefined],
    ['no-at-sign', undefined],
    ['trailing@', undefined],
  ];
  for (const [input, expected] of cases) {
    it(`normalizes ${JSON.stringify(input)} to ${String(expected)}`, () => {
      assert.equal(normalizeEmail(input), expected);
    });
  }
});

describe('claim hashes', () => {
  it('are keyed: the same value hashes alike under one secret and differently under another, and never contain it', () => {
    const one = new ClaimHasher('secret-one-0123456789');
    const other = new ClaimHasher('secret-two-0123456789');
    assert.equal(one.hash('email', 'janedoe@gmail.com'), one.hash('email', 'janedoe@gmail.com'));
    assert.notEqual(one.hash('email', 'janedoe@gmail.com'), other.hash('email', 'janedoe@gmail.com'));
    assert.notEqual(one.hash('email', 'x'), one.hash('device', 'x'));
    assert.doesNotMatch(one.hash('email', 'janedoe@gmail.com'), /janedoe/);
  });
});
