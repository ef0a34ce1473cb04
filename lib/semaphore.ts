/**
 * A counting semaphore over `size` units. A holder takes one unit or more; waiters go in order, so
 * a holder that needs many units is never passed over by smaller ones queued behind it.
 */
export class Semaphore {
  readonly #size: number;
  #used = 0;
  readonly #waiting: Array<{ units: number; resume: () => void }> = [];

  constructor(size: number) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`semaphore size must be a positive integer, got ${size}`);
    this.#size = size;
  }

  /** Units held now. */
  get used(): number {
    return this.#used;
  }

  async run<T>(task: () => Promise<T>, units = 1): Promise<T> {
    if (!Number.isInteger(units) || units < 1 || units > this.#size) {
      throw new RangeError(`a holder takes 1 to ${this.#size} units, not ${units}`);
    }
    if (this.#waiting.length > 0 || this.#used + units > this.#size) {
      // Counted in #used by #wake before it resumes us.
      await new Promise<void>((resume) => this.#waiting.push({ units, resume }));
    } else {
      this.#used += units;
    }
    try {
      return await task();
    } finally {
      this.#used -= units;
      this.#wake();
    }
  }

  #wake(): void {
    while (this.#waiting.length > 0 && this.#used + this.#waiting[0]!.units <= this.#size) {
      const next = this.#waiting.shift()!;
      this.#used += next.units;
      next.resume();
    }
  }
}

/**
 * Runs `task` over every item with at most `concurrency` at once; results keep the items' order.
 * After a failure no further item starts; the ones running are waited for, then the first
 * failure is thrown (see lib/settle.ts for why nothing is left running).
 */
export async function mapLimit<T, R>(
  items: readonly T[],
  concurrency: number,
  task: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (failure === undefined && next < items.length) {
      const index = next++;
      try {
        results[index] = await task(items[index]!, index);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
  if (failure !== undefined) throw failure.error;
  return results;
}
