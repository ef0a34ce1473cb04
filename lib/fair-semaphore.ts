// A counting semaphore shared by several parties (the blob transfers of every source registry):
// waiting parties take turns, and no party may hold more than `size - reserve` units, so the
// reserve is always left for the others. One slow registry can then hold most of the slots, never
// all of them, and a registry that arrives later is served next rather than after every waiting
// transfer of the first.

interface Waiter {
  readonly units: number;
  readonly resume: () => void;
}

export class FairSemaphore {
  readonly #size: number;
  readonly #maxPerParty: number;
  #used = 0;
  readonly #usedBy = new Map<string, number>();
  /** Waiters by party, in arrival order; the Map's order is the parties' turn order. */
  readonly #waiting = new Map<string, Waiter[]>();

  /** `reserve`: units no single party may take (default a quarter of the size, rounded down). */
  constructor(size: number, reserve = Math.floor(size / 4)) {
    if (!Number.isInteger(size) || size < 1) throw new RangeError(`semaphore size must be a positive integer, got ${size}`);
    this.#size = size;
    this.#maxPerParty = Math.max(1, size - Math.max(0, reserve));
  }

  /** Units held now, in all or by one party. */
  used(party?: string): number {
    return party === undefined ? this.#used : (this.#usedBy.get(party) ?? 0);
  }

  /** The most units one party may hold at once. */
  get maxPerParty(): number {
    return this.#maxPerParty;
  }

  /**
   * Runs `task` holding `units` of `party`'s share. With `signal`, the units come back as soon as it
   * aborts, whether or not the task ever settles: on Workers the I/O of a request that has ended
   * never does, and the units it held would be lost to every later request of the isolate.
   */
  async run<T>(party: string, task: () => Promise<T>, units = 1, signal?: AbortSignal): Promise<T> {
    if (!Number.isInteger(units) || units < 1 || units > this.#maxPerParty) {
      throw new RangeError(`a holder takes 1 to ${this.#maxPerParty} units, not ${units}`);
    }
    if (this.#waiting.size === 0 && this.#fits(party, units) === 'yes') {
      this.#take(party, units);
    } else {
      await new Promise<void>((resume) => {
        const queue = this.#waiting.get(party);
        if (queue) queue.push({ units, resume });
        else this.#waiting.set(party, [{ units, resume }]);
        this.#wake();
      });
    }
    let held = true;
    const release = () => {
      if (!held) return;
      held = false;
      this.#used -= units;
      const left = (this.#usedBy.get(party) ?? 0) - units;
      if (left > 0) this.#usedBy.set(party, left);
      else this.#usedBy.delete(party);
      this.#wake();
    };
    if (signal?.aborted) release();
    else signal?.addEventListener('abort', release, { once: true });
    try {
      return await task();
    } finally {
      signal?.removeEventListener('abort', release);
      release();
    }
  }

  /** 'cap': the party holds its share; 'full': not enough units free for anyone that large. */
  #fits(party: string, units: number): 'yes' | 'cap' | 'full' {
    if ((this.#usedBy.get(party) ?? 0) + units > this.#maxPerParty) return 'cap';
    return this.#used + units <= this.#size ? 'yes' : 'full';
  }

  #take(party: string, units: number): void {
    this.#used += units;
    this.#usedBy.set(party, (this.#usedBy.get(party) ?? 0) + units);
  }

  /**
   * Parties in turn, each its oldest waiter. A party at its share is passed over; a waiter that
   * needs more units than are free stops the round, so a large holder is never starved by
   * smaller ones of other parties.
   */
  #wake(): void {
    for (let progress = true; progress;) {
      progress = false;
      for (const [party, queue] of this.#waiting) {
        const head = queue[0]!;
        const fit = this.#fits(party, head.units);
        if (fit === 'full') return;
        if (fit === 'cap') continue;
        queue.shift();
        this.#waiting.delete(party);
        if (queue.length > 0) this.#waiting.set(party, queue); // to the back of the turn order
        this.#take(party, head.units);
        head.resume();
        progress = true;
        break;
      }
    }
  }
}
