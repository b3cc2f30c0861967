/**
 * Mutation testing of the money rules (`npm run mutate`): StrykerJS changes one thing at a time
 * in the credit rule, periods, the yearly schedule, refunds and top-ups, and runs a focused test
 * command (the integration tests of those rules and a few simulator seeds) against each change.
 * The credit rule's unit test runs first: it needs no database and kills a pure mutant in a
 * second. A mutant that survives is a rule no test notices: it gets a test, a simulator step, or a
 * sentence saying why it is equivalent. Too slow for CI (each mutant runs
 * the command); CONTRIBUTING.md says how to run it.
 *
 * TALLY_MUTATE narrows the files (a glob), e.g. TALLY_MUTATE=src/billing/credit-rule.ts, and
 * TALLY_MUTATE_COMMAND replaces the test command (a narrower one for a quick score of one file).
 *
 * StrykerJS is installed on first use by scripts/mutate.sh (not a devDependency: see there).
 */
const money = [
  'src/billing/credit-rule.ts',
  'src/billing/periods.ts',
  'src/billing/yearly.ts',
  'src/billing/payments.ts',
  'src/billing/top-up*.ts',
];

export default {
  testRunner: 'command',
  commandRunner: {
    command:
      process.env.TALLY_MUTATE_COMMAND ??
      'node --import tsx --test test/unit/credit-rule.test.ts && TALLY_SIMULATION_SEEDS=1000,1003,1007 node --import tsx test/run.ts test/integration/credit-rule test/integration/restores test/integration/stripe-history test/integration/stripe-edges test/integration/auto-top-up test/simulation/lifecycles',
  },
  mutate: process.env.TALLY_MUTATE ? [process.env.TALLY_MUTATE] : money,
  coverageAnalysis: 'off',
  concurrency: 1,
  timeoutMS: 300_000,
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  ignorePatterns: ['.stryker-tools', '.tally', '.scratch', 'reports', 'dist', 'client/dist', '.stryker-tmp'],
  tempDirName: '.stryker-tmp',
};
