/**
 * Background work on an interval: one pass at a time (a slow pass is never overlapped by the
 * next), the timer does not keep the process alive, and stop() waits for the pass in progress.
 * The task handles its own errors; a rejection here would be a bug.
 */
export class Periodic {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;

  constructor(
    private readonly intervalMilliseconds: number,
    private readonly task: () => Promise<void>,
  ) {}

  start(): void {
    this.timer = setInterval(() => {
      if (this.running === undefined) this.running = this.task().finally(() => (this.running = undefined));
    }, this.intervalMilliseconds);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    clearInterval(this.timer);
    await this.running;
  }
}

/**
 * A task for Periodic that runs `pass` until it finds nothing more to do (it answers how much it
 * did); a failed pass is logged and the next tick tries again.
 */
export function untilDone(
  pass: () => Promise<number>,
  logger: { error(object: object, message: string): void },
  failure: string,
): () => Promise<void> {
  return async () => {
    try {
      while ((await pass()) > 0);
    } catch (error) {
      logger.error({ err: error }, failure);
    }
  };
}
