import { runHistory, type RunResult } from './run.js';
import { generate, kindOf, type Step } from './workload.js';

/**
 * One seed: generate its lifecycles, play them against Tally, and on failure shrink the history
 * (drop chunks of steps, then single steps, while it still fails) to one that reproduces.
 */
export interface SeedOutcome {
  seed: number;
  steps: Step[];
  result: RunResult;
  shrunk?: { steps: Step[]; result: RunResult };
  milliseconds: number;
}

export interface SeedOptions {
  lifecycles: number;
  kinds: ReadonlySet<string>;
  stepsEach?: number;
  shrink?: boolean;
  /** The most runs shrinking may spend. */
  shrinkRunsMax?: number;
}

/** Restarts (an instance closed and another started mid-burst) are played by one seed in three. */
export const restartsFor = (seed: number, kinds: ReadonlySet<string>) => kinds.has('chaos:restart') && seed % 3 === 0;

/** The chaos a seed plays besides its steps. */
export const chaosFor = (seed: number, kinds: ReadonlySet<string>) => ({
  restarts: restartsFor(seed, kinds),
  replays: kinds.has('chaos:replay'),
});

export async function runSeed(seed: number, options: SeedOptions): Promise<SeedOutcome> {
  const started = Date.now();
  const steps = generate(seed, options.lifecycles, options.kinds, options.stepsEach);
  const chaos = chaosFor(seed, options.kinds);
  const result = await runHistory(steps, { seed, ...chaos });
  const outcome: SeedOutcome = { seed, steps, result, milliseconds: 0 };
  if (result.failures.length > 0 && options.shrink !== false)
    outcome.shrunk = await shrink(seed, steps, chaos, result, options.shrinkRunsMax ?? 40);
  outcome.milliseconds = Date.now() - started;
  return outcome;
}

export async function shrink(
  seed: number,
  steps: Step[],
  chaos: { restarts: boolean; replays: boolean },
  failing: RunResult,
  runsMax: number,
): Promise<{ steps: Step[]; result: RunResult }> {
  let best = { steps, result: failing };
  let runs = 0;
  for (let chunk = Math.max(1, Math.floor(steps.length / 2)); chunk >= 1 && runs < runsMax; chunk = Math.floor(chunk / 2)) {
    for (let start = 0; start < best.steps.length && runs < runsMax; ) {
      const candidate = [...best.steps.slice(0, start), ...best.steps.slice(start + chunk)];
      runs += 1;
      const result = await runHistory(candidate, { seed, ...chaos });
      if (result.failures.length > 0) best = { steps: candidate, result };
      else start += chunk;
    }
    if (chunk === 1) break;
  }
  return best;
}

/** A history as JSON, one step a line, for --history. */
export function describe(steps: Step[]): string {
  return `[\n${steps.map((step) => `  ${JSON.stringify(step)}`).join(',\n')}\n]`;
}

export const kindsOf = (steps: Step[]): string[] => [...new Set(steps.map(kindOf))];
