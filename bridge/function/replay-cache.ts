// Remembers what was already accepted (callback signatures, job ids) for a while, so a captured
// callback cannot be applied twice. Bounded: the oldest entries go first when it is full.

export interface ReplayCacheOptions {
  /** How long an entry is remembered: at least the span of timestamps still accepted (2 × 5 min). */
  readonly ttlMs: number;
  /** Oldest entries are forgotten beyond this, so a flood cannot grow memory without bound. */
  readonly maxEntries?: number;
  readonly now?: () => number;
}

/** Remembers ids (signatures, job ids) for a while; `remember` reports whether one was new. */
export class ReplayCache {
  readonly #entries = new Map<string, number>();
  readonly #ttlMs: number;
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(options: ReplayCacheOptions) {
    this.#ttlMs = options.ttlMs;
    this.#maxEntries = options.maxEntries ?? 100_000;
    this.#now = options.now ?? Date.now;
  }

  has(id: string): boolean {
    const expires = this.#entries.get(id);
    return expires !== undefined && expires > this.#now();
  }

  /** Records `id`; false when it was already there (a replay). */
  remember(id: string): boolean {
    this.#sweep();
    if (this.has(id)) return false;
    this.#entries.delete(id);
    this.#entries.set(id, this.#now() + this.#ttlMs);
    while (this.#entries.size > this.#maxEntries) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
    return true;
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Entries share one TTL, so insertion order is expiry order: drop from the front. */
  #sweep(): void {
    const now = this.#now();
    for (const [id, expires] of this.#entries) {
      if (expires > now) break;
      this.#entries.delete(id);
    }
  }
}
