/**
 * Bounded concurrency that keeps order where order matters: at most `concurrencyMax` tasks run
 * at once, and a task never starts while an earlier task sharing one of its keys has not
 * finished. Tasks that share no key run side by side. The webhook worker keys each event by the
 * Stripe objects it names (customer, subscription, payment intent, charge, invoice, account), so
 * the events of one customer are applied one at a time and in the order they were submitted,
 * while other customers' events fill the other lanes.
 *
 * A task submitted under an id that is already waiting or running is not run twice: the caller
 * gets the promise of the one in progress.
 */
interface Task<Result> {
  id: string;
  keys: readonly string[];
  run: () => Promise<Result>;
  resolve: (result: Result) => void;
  reject: (error: unknown) => void;
  promise: Promise<Result>;
}

export class OrderedLanes<Result> {
  private readonly waiting: Task<Result>[] = [];
  private readonly running = new Map<string, Task<Result>>();
  private readonly byId = new Map<string, Task<Result>>();
  private readonly waitingListeners: { atMost: number; resolve: () => void }[] = [];

  constructor(readonly concurrencyMax: number) {
    if (!Number.isSafeInteger(concurrencyMax) || concurrencyMax < 1)
      throw new RangeError(`lanes need a concurrency of at least 1, not ${concurrencyMax}`);
  }

  submit(id: string, keys: readonly string[], run: () => Promise<Result>): Promise<Result> {
    const known = this.byId.get(id);
    if (known !== undefined) return known.promise;
    let resolve!: (result: Result) => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<Result>((resolvePromise, rejectPromise) => {
      resolve = resolvePromise;
      reject = rejectPromise;
    });
    const task: Task<Result> = { id, keys, run, resolve, reject, promise };
    this.byId.set(id, task);
    this.waiting.push(task);
    this.startReady();
    return promise;
  }

  /** Ids of the tasks waiting or running. */
  ids(): string[] {
    return [...this.byId.keys()];
  }

  /** The promises of every task waiting or running now. */
  inProgress(): Promise<Result>[] {
    return [...this.byId.values()].map((task) => task.promise);
  }

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Resolves once at most `atMost` tasks are waiting for a lane (at once if that is already so). */
  whenWaitingAtMost(atMost: number): Promise<void> {
    if (this.waiting.length <= atMost) return Promise.resolve();
    return new Promise((resolve) => this.waitingListeners.push({ atMost, resolve }));
  }

  /**
   * Starts every waiting task whose keys are free, in submission order, while lanes are free. A
   * task left waiting reserves its keys for the scan, so that no later task sharing one of them
   * overtakes it.
   */
  private startReady(): void {
    const reserved = new Set<string>();
    for (const task of this.running.values()) for (const key of task.keys) reserved.add(key);
    for (let index = 0; index < this.waiting.length && this.running.size < this.concurrencyMax; ) {
      const task = this.waiting[index] as Task<Result>;
      const blocked = task.keys.some((key) => reserved.has(key));
      for (const key of task.keys) reserved.add(key);
      if (blocked) {
        index += 1;
        continue;
      }
      this.waiting.splice(index, 1);
      this.start(task);
    }
    this.tellWaitingListeners();
  }

  private start(task: Task<Result>): void {
    this.running.set(task.id, task);
    // A task that throws synchronously is a rejected promise like any other.
    void Promise.resolve()
      .then(task.run)
      .then(task.resolve, task.reject)
      .finally(() => {
        this.running.delete(task.id);
        this.byId.delete(task.id);
        this.startReady();
      });
  }

  private tellWaitingListeners(): void {
    for (let index = this.waitingListeners.length - 1; index >= 0; index -= 1) {
      const listener = this.waitingListeners[index] as { atMost: number; resolve: () => void };
      if (this.waiting.length <= listener.atMost) {
        this.waitingListeners.splice(index, 1);
        listener.resolve();
      }
    }
  }
}
