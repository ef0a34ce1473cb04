// A keyed work queue in the manner of client-go's rate-limited workqueue: a key waits at most once,
// a key is never handed to two workers at once (one added while being processed runs again right
// after), failures come back with exponential backoff and jitter, and a handler can ask to see a
// key again after a delay. Time is injected so tests run without sleeping.
//
// Keys added as urgent go to workers before the others. The controller adds the keys of watch
// events that way: a change then reaches the function within the time of one reconcile even
// while every other worker waits on a slow API server and thousands of keys of a resync wait.

import { equalJitterDelay, type BackoffBounds } from '../../lib/backoff.ts';

export interface Scheduler {
  now(): number;
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const systemScheduler: Scheduler = {
  now: () => Date.now(),
  setTimeout: (callback, ms) => {
    const timer = setTimeout(callback, ms);
    // Pending retries alone must not keep a stopping process alive.
    timer.unref();
    return timer;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

export interface Outcome {
  /** See the key again after this long even if nothing changes (a deadline, a retry time). */
  readonly requeueAfterMs?: number;
}

export type Handler = (key: string) => Promise<Outcome | void>;

export type Completion = 'done' | 'requeue' | 'error';

export interface WorkQueueOptions {
  /** Keys processed at once. */
  readonly concurrency: number;
  /** First retry delay after a failure; doubles with each consecutive failure of the key. */
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
  readonly random?: () => number;
  readonly scheduler?: Scheduler;
  readonly onError?: (key: string, error: unknown, retryInMs: number) => void;
  readonly onComplete?: (key: string, completion: Completion, ms: number) => void;
}

interface Delayed {
  readonly at: number;
  readonly handle: unknown;
}

export class WorkQueue {
  readonly #handler: Handler;
  readonly #concurrency: number;
  readonly #retryBackoff: BackoffBounds;
  readonly #random: () => number;
  readonly #scheduler: Scheduler;
  readonly #onError: WorkQueueOptions['onError'];
  readonly #onComplete: WorkQueueOptions['onComplete'];

  /** Keys waiting for a worker; a Set is both the dedupe and the FIFO. Urgent ones go first. */
  readonly #urgent = new Set<string>();
  readonly #ready = new Set<string>();
  readonly #processing = new Set<string>();
  /** Keys added while being processed (value: urgent): they wait again when their run ends. */
  readonly #again = new Map<string, boolean>();
  readonly #delayed = new Map<string, Delayed>();
  readonly #failures = new Map<string, number>();
  readonly #runs = new Set<Promise<void>>();
  #idleWaiters: (() => void)[] = [];
  #running = false;
  #stopped = false;

  constructor(handler: Handler, options: WorkQueueOptions) {
    if (!Number.isInteger(options.concurrency) || options.concurrency < 1)
      throw new Error('concurrency must be a positive integer');
    this.#handler = handler;
    this.#concurrency = options.concurrency;
    this.#retryBackoff = { baseMs: options.baseDelayMs ?? 500, maxMs: options.maxDelayMs ?? 300_000 };
    this.#random = options.random ?? Math.random;
    this.#scheduler = options.scheduler ?? systemScheduler;
    this.#onError = options.onError;
    this.#onComplete = options.onComplete;
  }

  /** Starts handing keys to workers (keys added before wait, deduplicated). */
  start(): void {
    if (this.#stopped) throw new Error('the queue was shut down');
    this.#running = true;
    this.#pump();
  }

  /** Adds the key (once); an urgent one goes to a worker before the keys that are not. */
  add(key: string, options: { readonly urgent?: boolean } = {}): void {
    if (this.#stopped) return;
    const urgent = options.urgent === true;
    if (this.#processing.has(key)) this.#again.set(key, urgent || this.#again.get(key) === true);
    else this.#wait(key, urgent);
    this.#pump();
  }

  /** Adds the key after `ms`; of several pending delays for one key the earliest wins. */
  addAfter(key: string, ms: number): void {
    if (this.#stopped) return;
    if (ms <= 0) {
      this.add(key);
      return;
    }
    const at = this.#scheduler.now() + ms;
    const pending = this.#delayed.get(key);
    if (pending !== undefined) {
      if (pending.at <= at) return;
      this.#scheduler.clearTimeout(pending.handle);
    }
    const handle = this.#scheduler.setTimeout(() => {
      this.#delayed.delete(key);
      this.add(key);
    }, ms);
    this.#delayed.set(key, { at, handle });
  }

  /** Adds the key after its backoff delay and counts one more failure for it. */
  addRateLimited(key: string): number {
    const failures = (this.#failures.get(key) ?? 0) + 1;
    this.#failures.set(key, failures);
    const delay = this.backoff(failures);
    this.addAfter(key, delay);
    return delay;
  }

  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** Delay before the retry after `failures` consecutive failures: exponential, "equal jitter". */
  backoff(failures: number): number {
    return equalJitterDelay(failures - 1, this.#retryBackoff, this.#random);
  }

  /** Keys waiting for a worker. */
  get depth(): number {
    return this.#urgent.size + this.#ready.size + this.#again.size;
  }

  get processing(): number {
    return this.#processing.size;
  }

  get delayed(): number {
    return this.#delayed.size;
  }

  /** Resolves once no key is waiting or being processed (delayed keys do not count). */
  idle(): Promise<void> {
    if (this.#isIdle()) return Promise.resolve();
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Stops taking keys, drops the waiting ones and waits for the runs in progress. */
  async shutdown(): Promise<void> {
    this.#stopped = true;
    this.#running = false;
    for (const pending of this.#delayed.values()) this.#scheduler.clearTimeout(pending.handle);
    this.#delayed.clear();
    this.#urgent.clear();
    this.#ready.clear();
    this.#again.clear();
    await Promise.all([...this.#runs]);
    this.#notifyIdle();
  }

  #wait(key: string, urgent: boolean): void {
    if (this.#urgent.has(key)) return;
    if (urgent) {
      this.#ready.delete(key);
      this.#urgent.add(key);
    } else {
      this.#ready.add(key);
    }
  }

  #pump(): void {
    while (this.#running && this.#processing.size < this.#concurrency && this.#urgent.size + this.#ready.size > 0) {
      const lane = this.#urgent.size > 0 ? this.#urgent : this.#ready;
      const key = lane.values().next().value as string;
      lane.delete(key);
      this.#processing.add(key);
      const run = this.#run(key);
      this.#runs.add(run);
      void run.finally(() => this.#runs.delete(run));
    }
    this.#notifyIdle();
  }

  async #run(key: string): Promise<void> {
    const started = this.#scheduler.now();
    let completion: Completion;
    try {
      const outcome = await this.#handler(key);
      this.#failures.delete(key);
      if (outcome?.requeueAfterMs !== undefined) {
        completion = 'requeue';
        this.addAfter(key, outcome.requeueAfterMs);
      } else {
        completion = 'done';
        // Done means nothing left to wait for: an older "look again later" is moot.
        this.#cancelDelayed(key);
      }
    } catch (error) {
      completion = 'error';
      const retryIn = this.addRateLimited(key);
      this.#onError?.(key, error, retryIn);
    }
    this.#processing.delete(key);
    const again = this.#again.get(key);
    this.#again.delete(key);
    if (again !== undefined && !this.#stopped) this.#wait(key, again);
    this.#onComplete?.(key, completion, this.#scheduler.now() - started);
    this.#pump();
  }

  #cancelDelayed(key: string): void {
    const pending = this.#delayed.get(key);
    if (pending === undefined) return;
    this.#scheduler.clearTimeout(pending.handle);
    this.#delayed.delete(key);
  }

  #isIdle(): boolean {
    return this.#processing.size === 0 && (this.#urgent.size + this.#ready.size === 0 || !this.#running);
  }

  #notifyIdle(): void {
    if (this.#idleWaiters.length === 0 || !this.#isIdle()) return;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
