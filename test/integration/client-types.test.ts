import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { generateClientTypes, generatedTypesPath } from '../../client/scripts/openapi-types.js';
import { publishedDocument, serveTestApp, type ServedApp } from '../helpers/served-app.js';

/**
 * Issue 13: the client's types are generated from /openapi.json and checked in. This test
 * generates them again, in memory, from the description a real Tally publishes, and fails when
 * the checked-in file differs: a route whose answers change cannot leave the client behind.
 */
let served: ServedApp;
before(async () => {
  served = await serveTestApp();
});
after(async () => {
  await served.close();
});

describe('the typed client', () => {
  it('has types generated from the description Tally publishes now', async () => {
    const generated = await generateClientTypes(await publishedDocument(served));
    if (process.env.TALLY_WRITE_CLIENT_TYPES === '1') writeFileSync(generatedTypesPath, generated);
    const checkedIn = readFileSync(generatedTypesPath, 'utf8');
    assert.ok(generated.includes('"/v1/accounts/{id}/usage"'), 'the generated types describe the usage call');
    assert.equal(checkedIn, generated, `${generatedTypesPath} is stale: run TALLY_WRITE_CLIENT_TYPES=1 npm test -- client-types`);
  });
});
