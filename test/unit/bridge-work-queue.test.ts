import { describe, expect, it } from 'vitest';
import { WorkQueue, type Handler, type Outcome, type Scheduler } from '../../bridge/reconcile/work-queue.ts';

/** A clock that only moves when told to; timers fire in time order as it passes them. */
class ManualScheduler implements Scheduler {
  time = 0;
  #timers = new Map<number, { at: number; callback: () => void }>();
  #next = 1;

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, ms: number): unknown {
    const id = this.#next++;
    this.#timers.set(id, { at: this.time + ms, callback });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  get pending(): number[] {
    return [...this.#timers.values()].map((timer) => timer.at - this.time).sort((a, b) => a - b);
  }

  /** Moves the clock forward, firing due timers (and letting the work they start settle). */
  async advance(ms: number): Promise<void> {
    const until = this.time + ms;
    for (;;) {
      const due = [...this.#timers.entries()].filter(([, timer]) => timer.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
      if (due === undefined) break;
      this.#timers.delete(due[0]);
      this.time = due[1].at;
      due[1].callback();
      await settle();
    }
    this.time = until;
    await settle();
  }
}

/** Lets every queued promise callback run. */
async function settle(): Promise<void> {
  for (let round = 0; round < 20; round++) await Promise.resolve();
}

/** A handler whose runs stay open until the test finishes them. */
class ControlledHandler {
  readonly started: string[] = [];
  readonly running = new Map<string, { resolve: (outcome?: Outcome) => void; reject: (error: unknown) => void }[]>();
  maxConcurrent = 0;
  #active = 0;

  readonly handle: Handler = (key) => {
    this.started.push(key);
    this.#active++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.#active);
    return new Promise<Outcome | void>((resolve, reject) => {
      const runs = this.running.get(key) ?? [];
      runs.push({
        resolve: (outcome) => {
          this.#active--;
          resolve(outcome);
        },
        reject: (error) => {
          this.#active--;
          reject(error);
        },
      });
      this.running.set(key, runs);
    });
  };

  get active(): number {
    return this.#active;
  }

  async finish(key: string, outcome?: Outcome): Promise<void> {
    const run = this.running.get(key)?.shift();
    if (run === undefined) throw new Error(`${key} is not running`);
    run.resolve(outcome);
    await settle();
  }

  async fail(key: string, error: unknown = new Error('boom')): Promise<void> {
    const run = this.running.get(key)?.shift();
    if (run === undefined) throw new Error(`${key} is not running`);
    run.reject(error);
    await settle();
  }
}

function setup(options: { concurrency?: number; random?: () => number; baseDelayMs?: number; maxDelayMs?: number } = {}) {
  const scheduler = new ManualScheduler();
  const handler = new ControlledHandler();
  const errors: { key: string; retryInMs: number }[] = [];
  const queue = new WorkQueue(handler.handle, {
    concurrency: options.concurrency ?? 2,
    scheduler,
    random: options.random ?? (() => 1),
    baseDelayMs: options.baseDelayMs ?? 100,
    maxDelayMs: options.maxDelayMs ?? 1_000,
    onError: (key, _error, retryInMs) => errors.push({ key, retryInMs }),
  });
  return { scheduler, handler, queue, errors };
}

describe('work queue: deduplication and ordering', () => {
  it('holds keys until started, then hands each one out once, in order', async () => {
    const { handler, queue } = setup({ concurrency: 1 });
    queue.add('a');
    queue.add('b');
    queue.add('a');
    await settle();
    expect(handler.started).toEqual([]);
    expect(queue.depth).toBe(2);
    queue.start();
    await settle();
    expect(handler.started).toEqual(['a']);
    await handler.finish('a');
    await handler.finish('b');
    expect(handler.started).toEqual(['a', 'b']);
    expect(queue.depth).toBe(0);
  });

  it('never runs one key on two workers: a key added while running runs again once, afterwards', async () => {
    const { handler, queue } = setup({ concurrency: 4 });
    queue.start();
    queue.add('a');
    await settle();
    queue.add('a');
    queue.add('a');
    await settle();
    expect(handler.started).toEqual(['a']);
    expect(handler.active).toBe(1);
    await handler.finish('a');
    expect(handler.started).toEqual(['a', 'a']);
    await handler.finish('a');
    expect(handler.started).toEqual(['a', 'a']);
    await queue.idle();
  });

  it('bounds concurrency', async () => {
    const { handler, queue } = setup({ concurrency: 2 });
    queue.start();
    for (const key of ['a', 'b', 'c', 'd', 'e']) queue.add(key);
    await settle();
    expect(handler.started).toEqual(['a', 'b']);
    expect(queue.processing).toBe(2);
    expect(queue.depth).toBe(3);
    await handler.finish('b');
    expect(handler.started).toEqual(['a', 'b', 'c']);
    await handler.finish('a');
    await handler.finish('c');
    await handler.finish('d');
    await handler.finish('e');
    expect(handler.maxConcurrent).toBe(2);
  });
  it('hands urgent keys to workers before the waiting ones, and promotes a waiting key made urgent', async () => {
    const { handler, queue } = setup({ concurrency: 1 });
    queue.start();
    queue.add('busy');
    await settle();
    for (const key of ['resync-1', 'resync-2', 'resync-3']) queue.add(key);
    queue.add('change', { urgent: true });
    queue.add('resync-3', { urgent: true });
    queue.add('change'); // a later plain add does not demote it
    expect(queue.depth).toBe(4);
    await handler.finish('busy');
    await handler.finish('change');
    await handler.finish('resync-3');
    await handler.finish('resync-1');
    await handler.finish('resync-2');
    expect(handler.started).toEqual(['busy', 'change', 'resync-3', 'resync-1', 'resync-2']);
    expect(queue.depth).toBe(0);
  });

  it('keeps the urgency of a key added while it runs for its next run', async () => {
    const { handler, queue } = setup({ concurrency: 1 });
    queue.start();
    queue.add('a');
    await settle();
    queue.add('b');
    queue.add('a', { urgent: true });
    await handler.finish('a');
    expect(handler.started).toEqual(['a', 'a']);
    await handler.finish('a');
    await handler.finish('b');
    expect(handler.started).toEqual(['a', 'a', 'b']);
  });
});

describe('work queue: failures and backoff', () => {
  it('retries a failing key with exponential backoff, capped, and forgets after a success', async () => {
    const { scheduler, handler, queue, errors } = setup({ concurrency: 1, random: () => 1, baseDelayMs: 100, maxDelayMs: 500 });
    queue.start();
    queue.add('a');
    await settle();
    const delays: number[] = [];
    for (let attempt = 0; attempt < 5; attempt++) {
      await handler.fail('a');
      delays.push(errors.at(-1)!.retryInMs);
      expect(scheduler.pending).toEqual([delays.at(-1)]);
      await scheduler.advance(delays.at(-1)! - 1);
      expect(handler.active).toBe(0);
      await scheduler.advance(1);
      expect(handler.active).toBe(1);
    }
    expect(delays).toEqual([100, 200, 400, 500, 500]);
    expect(queue.failures('a')).toBe(5);
    await handler.finish('a');
    expect(queue.failures('a')).toBe(0);
    queue.add('a');
    await settle();
    await handler.fail('a');
    expect(errors.at(-1)!.retryInMs).toBe(100);
  });

  it('jitters each delay between half and all of the exponential value', async () => {
    let random = 0;
    const { queue } = setup({ random: () => random, baseDelayMs: 1_000, maxDelayMs: 60_000 });
    random = 0;
    expect([1, 2, 3].map((failures) => queue.backoff(failures))).toEqual([500, 1_000, 2_000]);
    random = 0.999_999;
    expect([1, 2, 3].map((failures) => queue.backoff(failures))).toEqual([1_000, 2_000, 4_000]);
    random = 0.5;
    expect(queue.backoff(30)).toBe(45_000);
  });

  it('keeps failures per key', async () => {
    const { handler, queue, errors } = setup({ concurrency: 2 });
    queue.start();
    queue.add('a');
    queue.add('b');
    await settle();
    await handler.fail('a');
    await handler.finish('b');
    expect(queue.failures('a')).toBe(1);
    expect(queue.failures('b')).toBe(0);
    expect(errors.map((error) => error.key)).toEqual(['a']);
  });

  it('runs a failed key again at once when it is added meanwhile (new information)', async () => {
    const { handler, queue } = setup({ concurrency: 1 });
    queue.start();
    queue.add('a');
    await settle();
    queue.add('a');
    await handler.fail('a');
    expect(handler.started).toEqual(['a', 'a']);
  });
});

describe('work queue: requeue after', () => {
  it('sees a key again after the delay a handler asks for', async () => {
    const { scheduler, handler, queue } = setup();
    queue.start();
    queue.add('a');
    await settle();
    await handler.finish('a', { requeueAfterMs: 5_000 });
    expect(queue.delayed).toBe(1);
    await scheduler.advance(4_999);
    expect(handler.started).toEqual(['a']);
    await scheduler.advance(1);
    expect(handler.started).toEqual(['a', 'a']);
    expect(queue.failures('a')).toBe(0);
  });

  it('keeps the earliest of several pending delays for a key', async () => {
    const { scheduler, handler, queue } = setup();
    queue.start();
    queue.addAfter('a', 3_000);
    queue.addAfter('a', 1_000);
    queue.addAfter('a', 2_000);
    expect(scheduler.pending).toEqual([1_000]);
    await scheduler.advance(1_000);
    expect(handler.started).toEqual(['a']);
  });

  it('drops a pending check once a run of the key ends with nothing left to wait for', async () => {
    const { scheduler, handler, queue } = setup();
    queue.start();
    queue.addAfter('a', 10_000);
    queue.add('a');
    await settle();
    await handler.finish('a');
    expect(scheduler.pending).toEqual([]);
    await scheduler.advance(20_000);
    expect(handler.started).toEqual(['a']);
  });

  it('treats a zero delay as an immediate add', async () => {
    const { handler, queue } = setup();
    queue.start();
    queue.addAfter('a', 0);
    await settle();
    expect(handler.started).toEqual(['a']);
  });
});

describe('work queue: shutdown', () => {
  it('waits for runs in progress, drops waiting and delayed keys, and takes no more', async () => {
    const { scheduler, handler, queue } = setup({ concurrency: 1 });
    queue.start();
    queue.add('a');
    queue.add('b');
    queue.addAfter('c', 1_000);
    await settle();
    let stopped = false;
    const stopping = queue.shutdown().then(() => (stopped = true));
    await settle();
    expect(stopped).toBe(false);
    await handler.finish('a');
    await stopping;
    expect(stopped).toBe(true);
    queue.add('d');
    await scheduler.advance(5_000);
    expect(handler.started).toEqual(['a']);
    expect(scheduler.pending).toEqual([]);
  });

  it('resolves idle() once nothing waits or runs', async () => {
    const { handler, queue } = setup();
    queue.start();
    queue.add('a');
    await settle();
    let idle = false;
    void queue.idle().then(() => (idle = true));
    await settle();
    expect(idle).toBe(false);
    await handler.finish('a');
    expect(idle).toBe(true);
  });
});

describe('work queue: with a real handler', () => {
  it('processes many keys with every key handled and never two at once per key', async () => {
    const running = new Set<string>();
    const seen = new Map<string, number>();
    let overlap = false;
    const queue = new WorkQueue(
      async (key) => {
        if (running.has(key)) overlap = true;
        running.add(key);
        await settle();
        running.delete(key);
        seen.set(key, (seen.get(key) ?? 0) + 1);
      },
      { concurrency: 8 },
    );
    queue.start();
    for (let round = 0; round < 5; round++) {
      for (let index = 0; index < 200; index++) queue.add(`key-${index % 50}`);
      await settle();
    }
    await queue.idle();
    expect(overlap).toBe(false);
    expect(seen.size).toBe(50);
    await queue.shutdown();
  });
});
