/**
 * One-way imports in src/ (`npm run deps`, run by `npm run lint` and so by .ci/run). Each file
 * of src/ belongs to one layer below; a layer imports only from the layers listed before it,
 * never from one after it, and no files import each other in a circle. Type-only imports count:
 * a type imported upward couples two folders as much as a value does.
 *
 * The layers, lowest first (STYLE.md, "The shape of the house"):
 *   base       errors.ts (the product's error type), package-root.ts (where SQL is read from),
 *              ports/ (interfaces that higher layers implement and assembly hands in: the alert
 *              port), timing/ (Periodic, untilDone). They import nothing of Tally's.
 *   db         the pool, transactions, embedded PostgreSQL, migrations, SQLSTATE to errors.
 *   pricing    meters, rate cards and their versions: the shapes a priced spend names, which
 *              the ledger checks and the catalog declares.
 *   ledger     the money core: grants, entries, holds, the usage batcher, the sweeper.
 *   stripe     the adapter: signature check, object shapes, the API client and its breaker.
 *   billing    plans, checkout, subscriptions, trials, packs, refunds, disputes, top-ups: it
 *              reads the ledger and the Stripe adapter.
 *   webhooks   the inbox, preparation, ordered lanes and the worker that applies Stripe's
 *              events through billing.
 *   events     the event log and its delivery to the app's endpoints.
 *   ops        reconciliation, alerts and their sinks, metrics, GDPR: it looks at everything
 *              below it, and everything below it raises alerts through ports/alerts.ts.
 *   dashboard  the operators' reads and the browser assets.
 *   http       the server, routes, auth, error rendering, OpenAPI.
 *   assembly   config.ts, app.ts, main.ts and cli/: they wire the rest together.
 * Neighbours that do not import each other today (ledger and stripe, webhooks and events) are
 * ordered all the same, so that a first import between them is a decision made here.
 * A new folder of src/ must be given a layer: a file outside every layer fails `no-unlayered`.
 */
const layers = [
  { name: 'base', path: '^src/((errors|package-root)\\.ts$|ports/|timing/)' },
  { name: 'db', path: '^src/db/' },
  { name: 'pricing', path: '^src/pricing/' },
  { name: 'ledger', path: '^src/ledger/' },
  { name: 'stripe', path: '^src/stripe/' },
  { name: 'billing', path: '^src/billing/' },
  { name: 'webhooks', path: '^src/webhooks/' },
  { name: 'events', path: '^src/events/' },
  { name: 'ops', path: '^src/ops/' },
  { name: 'dashboard', path: '^src/dashboard/' },
  { name: 'http', path: '^src/http/' },
  { name: 'assembly', path: '^src/((app|main|config)\\.ts$|cli/)' },
];

const upwardRules = layers.slice(0, -1).map((layer, index) => {
  const higher = layers.slice(index + 1);
  return {
    name: `${layer.name}-imports-no-higher-layer`,
    comment: `${layer.name} may not import ${higher.map((above) => above.name).join(', ')}: imports flow down only.`,
    severity: 'error',
    from: { path: layer.path },
    to: { path: higher.map((above) => above.path) },
  };
});

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'Files that import each other in a circle cannot be read, tested or moved one at a time.',
      severity: 'error',
      from: {},
      to: { circular: true },
    },
    ...upwardRules,
    {
      name: 'no-unlayered',
      comment: 'Every file of src/ belongs to a layer of this config; give a new folder its place in the list.',
      severity: 'error',
      from: { path: '^src/', pathNot: layers.map((layer) => layer.path) },
      to: {},
    },
    {
      name: 'no-unlayered-target',
      comment: 'Every file of src/ belongs to a layer of this config; give a new folder its place in the list.',
      severity: 'error',
      from: {},
      to: { path: '^src/', pathNot: layers.map((layer) => layer.path) },
    },
    {
      name: 'no-dev-dependency-in-src',
      comment: 'Production installs without devDependencies (tsx, typescript, the linters): src/ may not need them at run time.',
      severity: 'error',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-dev'], dependencyTypesNot: ['type-only'] },
    },
    {
      name: 'no-undeclared-package',
      comment: 'A package that src/ imports must be a dependency in package.json, not one that happens to be installed.',
      severity: 'error',
      from: { path: '^src/' },
      to: { dependencyTypes: ['npm-no-pkg', 'npm-unknown'] },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
  },
};
