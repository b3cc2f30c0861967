import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Catalog } from '../../src/billing/catalog.js';
import { TestClock, type TestApp, createTestApp, testCatalog } from '../helpers/app.js';

// Rate cards in the database, versioned: the catalog publishes version 1 at the first start and a
// new version only when its rates change; operators publish versions for now or later; versions
// are never edited or deleted; every refusal writes nothing.

const standardV1 = {
  'openai/gpt-5': { input_tokens: '0.000125', cached_input_tokens: '0.0000125', output_tokens: '0.001' },
  'openai/gpt-5-mini': { input_tokens: '0.000025', output_tokens: '0.0002' },
  'anthropic/claude-sonnet-4.5': { input_tokens: '0.0003', cache_read_tokens: '0.00003', output_tokens: '0.0015' },
  'images/generate': { images: '4' },
};

/** The example catalog with the standard card's rates replaced. */
function catalogWithStandard(rates: Catalog['rate_cards'][number]['rates']): Catalog {
  const catalog = testCatalog();
  return { ...catalog, rate_cards: catalog.rate_cards.map((card) => (card.id === 'standard' ? { ...card, rates } : card)) };
}

const withOutput = (output: string) => ({ ...standardV1, 'openai/gpt-5': { ...standardV1['openai/gpt-5'], output_tokens: output } });

let test: TestApp;
const clock = new TestClock();

before(async () => {
  test = await createTestApp({ clock });
});
after(async () => {
  await test.close();
});

const versionsOf = async (card: string) => (await test.admin('GET', `/v1/admin/rate-cards/${card}/versions`)).body.versions;
const versionCount = async () =>
  (await test.database.db.query<{ count: number }>('select count(*)::int as count from rate_card_versions')).rows[0]?.count;

/** Starts another Tally on the same database with this catalog (a deploy), then stops it. */
async function startWith(catalog: Catalog, at = clock): Promise<void> {
  const other = await createTestApp({ database: test.database, catalog, clock: at });
  await other.close();
}

describe('the catalog', () => {
  it('publishes version 1 of each card at the first start, and the app reads them with nothing scheduled', async () => {
    const { status, body } = await test.call('GET', '/v1/rate-cards');
    assert.equal(status, 200);
    assert.deepEqual(
      body.rate_cards.map((card: { id: string; version: number; next: unknown }) => [card.id, card.version, card.next]),
      [
        ['standard', 1, null],
        ['volume', 1, null],
      ],
    );
    const standard = body.rate_cards[0];
    assert.deepEqual(standard.rates, standardV1);
    assert.equal(standard.effective_at, clock.now().toISOString());
    assert.deepEqual(Object.keys(standard).sort(), ['effective_at', 'id', 'next', 'published_at', 'rates', 'version']);
  });

  it('publishes nothing when a process starts again with the same catalog, or with rates written otherwise but equal', async () => {
    const before = await versionCount();
    await startWith(testCatalog());
    await startWith(catalogWithStandard({ ...standardV1, 'openai/gpt-5-mini': { input_tokens: '0.0000250', output_tokens: '0.00020' } }));
    assert.equal(await versionCount(), before);
  });

  it('publishes a new version, effective at the start, for a card whose catalog rates changed', async () => {
    clock.advanceSeconds(60);
    await startWith(catalogWithStandard(withOutput('0.0012')));
    const versions = await versionsOf('standard');
    assert.deepEqual(
      versions.map((version: { version: number }) => version.version),
      [2, 1],
    );
    assert.equal(versions[0].rates['openai/gpt-5'].output_tokens, '0.0012');
    assert.equal(versions[0].effective_at, clock.now().toISOString());
    assert.equal((await versionsOf('volume')).length, 1, 'the unchanged card has no new version');
  });

  it("never undoes an operator's version when it starts again unchanged, and publishes again when it changes", async () => {
    clock.advanceSeconds(60);
    const published = await test.admin('PUT', '/v1/admin/rate-cards/standard', { rates: withOutput('0.0015') });
    assert.equal(published.status, 200);
    assert.equal(published.body.version, 3);
    await startWith(catalogWithStandard(withOutput('0.0012')));
    const current = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[0];
    assert.deepEqual([current.version, current.rates['openai/gpt-5'].output_tokens], [3, '0.0015']);
    clock.advanceSeconds(60);
    await startWith(testCatalog());
    const after = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[0];
    assert.deepEqual([after.version, after.rates['openai/gpt-5'].output_tokens], [4, '0.001'], 'the catalog went back to its first rates');
  });

  it('publishes one version when two processes start at once with a changed catalog', async () => {
    clock.advanceSeconds(60);
    const before = await versionCount();
    const changed = catalogWithStandard(withOutput('0.0011'));
    const apps = await Promise.all([1, 2, 3].map(() => createTestApp({ database: test.database, catalog: changed, clock })));
    await Promise.all(apps.map((app) => app.close()));
    assert.equal(await versionCount(), (before ?? 0) + 1);
    await startWith(testCatalog());
  });
});

describe('an operator', () => {
  it('publishes a version for later: the app sees it as next, then as current once its time has come', async () => {
    clock.advanceSeconds(60);
    const at = new Date(clock.now().getTime() + 3600_000).toISOString();
    const published = await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: standardV1, effective_at: at });
    assert.equal(published.status, 200);
    assert.deepEqual(
      [published.body.id, published.body.effective_at, published.body.published_at],
      ['volume', at, clock.now().toISOString()],
    );
    const before = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[1];
    assert.deepEqual([before.version, before.next.version, before.next.effective_at], [1, published.body.version, at]);
    clock.advanceSeconds(3600);
    const after = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[1];
    assert.deepEqual([after.version, after.next], [published.body.version, null]);
    assert.deepEqual(after.rates, standardV1);
  });

  it('keeps a version scheduled for later in effect at its time when another is published for now', async () => {
    clock.advanceSeconds(60);
    const later = new Date(clock.now().getTime() + 600_000).toISOString();
    const scheduled = await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: withOutput('0.002'), effective_at: later });
    const now = await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: withOutput('0.003') });
    assert.equal(now.body.version, scheduled.body.version + 1);
    const current = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[1];
    assert.deepEqual([current.version, current.next.version], [now.body.version, scheduled.body.version]);
    clock.advanceSeconds(600);
    assert.equal((await test.call('GET', '/v1/rate-cards')).body.rate_cards[1].version, scheduled.body.version);
  });

  it('lists every version newest published first, each as {id, version, effective_at, rates, published_at}', async () => {
    const versions = await versionsOf('volume');
    const numbers = versions.map((version: { version: number }) => version.version);
    assert.deepEqual(
      numbers,
      [...numbers].sort((x, y) => y - x),
    );
    assert.equal(numbers.at(-1), 1);
    for (const version of versions)
      assert.deepEqual(Object.keys(version).sort(), ['effective_at', 'id', 'published_at', 'rates', 'version']);
  });

  it('publishes with effective_at a little in the past (clock skew) as now', async () => {
    const skewed = new Date(clock.now().getTime() - 30_000).toISOString();
    const published = await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: withOutput('0.004'), effective_at: skewed });
    assert.equal(published.status, 200);
    assert.equal(published.body.effective_at, clock.now().toISOString());
  });

  it('is audited with the version in effect before and the one published', async () => {
    const inEffect = (await test.call('GET', '/v1/rate-cards')).body.rate_cards[1].version;
    const published = await test.admin('PUT', '/v1/admin/rate-cards/volume', { rates: withOutput('0.005') });
    const { rows } = await test.database.db.query<{ actor: string; before: { version: number }; after: { version: number } }>(
      `select actor, before, after from audit_log where action = 'rate_card.published' order by id desc limit 1`,
    );
    assert.deepEqual([rows[0]?.actor, rows[0]?.before.version, rows[0]?.after.version], ['admin', inEffect, published.body.version]);
  });
});

describe('refusals write nothing', () => {
  const refusals: [string, unknown, string, RegExp][] = [
    ['an unknown meter', { rates: { ...standardV1, 'openai/gpt-6': { input_tokens: '1' } } }, 'rates.openai/gpt-6', /unknown meter/],
    [
      'an unknown dimension',
      { rates: { ...standardV1, 'images/generate': { images: '4', pixels: '0.1' } } },
      'rates.images/generate.pixels',
      /unknown dimension pixels/,
    ],
    ['a missing rate', { rates: { ...standardV1, 'images/generate': {} } }, 'rates.images/generate.images', /no rate for dimension/],
    ['a missing meter', { rates: { 'images/generate': { images: '4' } } }, 'rates.openai/gpt-5', /no rates for meter/],
    ['a rate as a number', { rates: { ...standardV1, 'images/generate': { images: 4 } } }, 'rates.images/generate.images', /./],
    [
      'a rate with 13 decimal places',
      { rates: { ...standardV1, 'images/generate': { images: '0.0000000000001' } } },
      'rates.images/generate.images',
      /at most 12 decimal places/,
    ],
    [
      'a rate in exponent form',
      { rates: { ...standardV1, 'images/generate': { images: '4e0' } } },
      'rates.images/generate.images',
      /decimal/,
    ],
    ['a negative rate', { rates: { ...standardV1, 'images/generate': { images: '-4' } } }, 'rates.images/generate.images', /decimal/],
    ['no rates', {}, 'rates', /required/],
    ['an unknown field', { rates: standardV1, note: 'x' }, 'note', /unknown field/],
    ['effective_at that is not a timestamp', { rates: standardV1, effective_at: 'tomorrow' }, 'effective_at', /ISO 8601/],
  ];
  for (const [name, body, field, message] of refusals) {
    it(`refuses ${name} with 400 invalid_request naming ${field}`, async () => {
      const before = await versionCount();
      const { status, body: answer } = await test.admin('PUT', '/v1/admin/rate-cards/standard', body);
      assert.equal(status, 400, JSON.stringify(answer));
      assert.equal(answer.error.code, 'invalid_request');
      assert.equal(answer.error.field, field);
      assert.match(answer.error.message, message);
      assert.equal(await versionCount(), before);
    });
  }

  it('refuses effective_at more than 60 s in the past with 400 naming it', async () => {
    const before = await versionCount();
    const past = new Date(clock.now().getTime() - 61_000).toISOString();
    const { status, body } = await test.admin('PUT', '/v1/admin/rate-cards/standard', { rates: standardV1, effective_at: past });
    assert.equal(status, 400);
    assert.deepEqual([body.error.code, body.error.field], ['invalid_request', 'effective_at']);
    assert.match(body.error.message, /more than 60 seconds in the past/);
    assert.equal(await versionCount(), before);
  });

  it('refuses an unknown card with 404 rate_card_not_found, on publishing and on listing its versions', async () => {
    const before = await versionCount();
    const published = await test.admin('PUT', '/v1/admin/rate-cards/gold', { rates: standardV1 });
    assert.deepEqual([published.status, published.body.error.code], [404, 'rate_card_not_found']);
    const listed = await test.admin('GET', '/v1/admin/rate-cards/gold/versions');
    assert.deepEqual([listed.status, listed.body.error.code], [404, 'rate_card_not_found']);
    assert.equal(await versionCount(), before);
    assert.equal((await test.database.db.query(`select 1 from rate_cards where id = 'gold'`)).rowCount, 0);
  });

  it('refuses the app key and the viewer key on publishing, and lets the viewer read', async () => {
    assert.equal((await test.call('PUT', '/v1/admin/rate-cards/standard', { rates: standardV1 })).status, 403);
    const { viewerKey } = await import('../helpers/app.js');
    assert.equal((await test.call('PUT', '/v1/admin/rate-cards/standard', { rates: standardV1 }, viewerKey)).status, 403);
    assert.equal((await test.call('GET', '/v1/admin/rate-cards/standard/versions', undefined, viewerKey)).status, 200);
    assert.equal((await test.call('GET', '/v1/rate-cards', undefined, viewerKey)).status, 200);
  });
});

describe('versions in the database', () => {
  it('are never edited or deleted, whoever asks', async () => {
    for (const statement of [
      `update rate_card_versions set rates = '{}' where rate_card_id = 'standard' and version = 1`,
      `delete from rate_card_versions where rate_card_id = 'standard' and version = 1`,
      'truncate rate_card_versions cascade',
    ]) {
      await assert.rejects(test.database.db.query(statement), /never edited or deleted/, statement);
    }
  });

  it('refuse rates that are not decimal strings, whoever writes them', async () => {
    for (const rates of ['{"m": {"d": 0.5}}', '{"m": {"d": "1e-3"}}', '{"m": {"d": "0.0000000000001"}}', '{"m": "1"}', '[]']) {
      await assert.rejects(
        test.database.db.query(
          `insert into rate_card_versions (rate_card_id, version, effective_at, rates, source, published_at)
           values ('standard', 1000, now(), $1, 'admin', now())`,
          [rates],
        ),
        /rates_are_decimals/,
        rates,
      );
    }
  });

  it('price exactly in numeric: 12 decimal places times quantities near 2^53, with no float in between', async () => {
    const price = async (rates: unknown, quantities: unknown) =>
      (await test.database.db.query<{ cost: string }>(`select tally_price($1, 'm', $2)::text as cost`, [rates, quantities])).rows[0]?.cost;
    assert.equal(await price({ m: { a: '0.000000000001' } }, { a: 9007199254740991 }), '9007.199254740991');
    assert.equal(
      await price({ m: { a: '0.000000000001', b: '999999999999999.999999999999' } }, { a: 1, b: 9007199254740991 }),
      '9007199254740990999999999990992.80074525901',
    );
    assert.equal(await price({ m: { a: '0.1', b: '0.2' } }, { a: 1, b: 1 }), '0.3', 'not 0.30000000000000004');
    assert.equal(await price({ m: { a: '0.000125' } }, { a: 0 }), '0');
    assert.equal(await price({ m: { a: '0.000125' } }, { a: 8 }), '0.001', 'without trailing zeros');
  });

  it('refuse to price a meter or dimension the rates lack, or a quantity that is not a non-negative integer', async () => {
    const price = (quantities: unknown, meter = 'm') =>
      test.database.db.query(`select tally_price('{"m": {"a": "1"}}', $1, $2)`, [meter, quantities]);
    await assert.rejects(price({ a: 1 }, 'other'), (error: { code?: string }) => error.code === 'unknown_meter');
    for (const quantities of [{ b: 1 }, { a: -1 }, { a: 1.5 }, { a: '1' }]) {
      await assert.rejects(price(quantities), (error: { code?: string; details?: { field?: string } }) => {
        assert.equal(error.code, 'invalid_request');
        assert.match(error.details?.field ?? '', /^quantities\.[ab]$/);
        return true;
      });
    }
  });

  it("give an account its plan's card while its subscription is active, otherwise the default card", async () => {
    const db = test.database.db;
    await test.call('PUT', '/v1/accounts/card-a', {});
    const cardOf = async () => (await db.query<{ card: string }>(`select tally_account_rate_card('card-a') as card`)).rows[0]?.card;
    assert.equal(await cardOf(), 'standard', 'no subscription: the default card');
    await db.query(
      `insert into subscriptions (id, account_id, status, plan_id, event_created, event_id) values ('sub_card', 'card-a', 'active', 'pro', now(), 'evt_card')`,
    );
    assert.equal(await cardOf(), 'volume', "the pro plan's card");
    await db.query(`update subscriptions set plan_id = 'starter' where id = 'sub_card'`);
    assert.equal(await cardOf(), 'standard', 'a plan that names no card: the default');
    await db.query(`update subscriptions set plan_id = 'pro', status = 'canceled' where id = 'sub_card'`);
    assert.equal(await cardOf(), 'standard', 'a cancelled subscription: the default');
  });
});
