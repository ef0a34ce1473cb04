// What the bridge knows about each source image: its verified backup, a copy in flight, or a
// failure with the time of the next attempt, plus which workloads wait for it. In memory only: a
// restart forgets it all and costs one more request per image (a HEAD at the function), nothing
// else. Entries expire, so a moved tag is copied again later and memory stays bounded.

import { equalJitterDelay, type BackoffBounds } from '../../lib/backoff.ts';

export type ImageStatus =
  | { readonly state: 'unknown' }
  | { readonly state: 'backed-up'; readonly target: string; readonly digest: string }
  | { readonly state: 'in-flight'; readonly until: number }
  | { readonly state: 'failed'; readonly retryAt: number; readonly error: string; readonly failures: number };

export interface ImageLedgerOptions {
  readonly now?: () => number;
  readonly random?: () => number;
  /** How long a verified backup is used to patch new workloads before it is asked for again. */
  readonly backupTtlMs?: number;
  /** First delay before retrying an image whose copy failed; doubles per failure. */
  readonly failureBaseMs?: number;
  readonly failureMaxMs?: number;
}

interface Entry {
  backup?: { target: string; digest: string; at: number };
  inFlightUntil?: number;
  /** When the request in flight was sent, for the latency of its result. */
  sentAt?: number;
  failure?: { failures: number; retryAt: number; error: string; reason?: string };
  /**
   * The workloads waiting, dropped when they are released: most entries have none, and most of
   * the others one, kept as the key itself (a Set of one costs ~240 bytes more, times every
   * image of a first sync).
   */
  waiters?: string | Set<string>;
}

export class ImageLedger {
  readonly #entries = new Map<string, Entry>();
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #backupTtlMs: number;
  readonly #failureBackoff: BackoffBounds;

  constructor(options: ImageLedgerOptions = {}) {
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;
    this.#backupTtlMs = options.backupTtlMs ?? 15 * 60_000;
    this.#failureBackoff = { baseMs: options.failureBaseMs ?? 5_000, maxMs: options.failureMaxMs ?? 5 * 60_000 };
  }

  status(source: string): ImageStatus {
    const entry = this.#entries.get(source);
    if (entry === undefined) return { state: 'unknown' };
    const now = this.#now();
    // A verified backup is usable even while another copy of the same source runs (a request
    // made before the result came in some other way).
    if (entry.backup !== undefined && entry.backup.at + this.#backupTtlMs > now) {
      return { state: 'backed-up', target: entry.backup.target, digest: entry.backup.digest };
    }
    if (entry.inFlightUntil !== undefined && entry.inFlightUntil > now) return { state: 'in-flight', until: entry.inFlightUntil };
    if (entry.failure !== undefined && entry.failure.retryAt > now) return { state: 'failed', ...entry.failure };
    return { state: 'unknown' };
  }

  /** The verified backup of a source, if one is known and fresh. */
  backupOf(source: string): string | undefined {
    const status = this.status(source);
    return status.state === 'backed-up' ? status.target : undefined;
  }

  /** A copy is asked for now: until `until` nobody asks again; after it, the request counts as lost. */
  begin(source: string, until: number): void {
    const entry = this.#entry(source);
    entry.inFlightUntil = until;
    entry.sentAt = this.#now();
  }

  /** How long ago the request in flight for `source` was sent, if this process sent one. */
  sinceSent(source: string): number | undefined {
    const sentAt = this.#entries.get(source)?.sentAt;
    return sentAt === undefined ? undefined : this.#now() - sentAt;
  }

  /** `key` wants to hear when `source` is settled. */
  wait(source: string, key: string): void {
    const entry = this.#entry(source);
    if (entry.waiters === undefined) entry.waiters = key;
    else if (typeof entry.waiters === 'string') {
      if (entry.waiters !== key) entry.waiters = new Set([entry.waiters, key]);
    } else entry.waiters.add(key);
  }

  /** Records a verified backup; returns the workloads that waited for it. */
  succeed(source: string, target: string, digest: string): string[] {
    const entry = this.#entry(source);
    entry.backup = { target, digest, at: this.#now() };
    entry.inFlightUntil = undefined;
    entry.sentAt = undefined;
    entry.failure = undefined;
    return this.#release(entry);
  }

  /**
   * Records a failed copy and when to try again; returns the workloads that waited for it.
   * `reason`: what the source said about the image (a result's reason, e.g. source_not_found).
   */
  fail(source: string, error: string, reason?: string): { waiters: string[]; retryInMs: number; failures: number } {
    const entry = this.#entry(source);
    const failures = (entry.failure?.failures ?? 0) + 1;
    const retryInMs = equalJitterDelay(failures - 1, this.#failureBackoff, this.#random);
    entry.failure = { failures, retryAt: this.#now() + retryInMs, error, ...(reason !== undefined && { reason }) };
    entry.inFlightUntil = undefined;
    entry.sentAt = undefined;
    return { waiters: this.#release(entry), retryInMs, failures };
  }

  /** What the source said when the last copy failed (until a copy succeeds or the entry expires). */
  failureReason(source: string): string | undefined {
    return this.#entries.get(source)?.failure?.reason;
  }

  /** Drops what has expired and waits for nothing; called now and then (on resync). */
  prune(): void {
    const now = this.#now();
    for (const [source, entry] of this.#entries) {
      const live =
        (entry.inFlightUntil !== undefined && entry.inFlightUntil > now) ||
        (entry.backup !== undefined && entry.backup.at + this.#backupTtlMs > now) ||
        (entry.failure !== undefined && entry.failure.retryAt > now);
      if (!live && entry.waiters === undefined) this.#entries.delete(source);
    }
  }

  get size(): number {
    return this.#entries.size;
  }

  #entry(source: string): Entry {
    let entry = this.#entries.get(source);
    if (entry === undefined) {
      entry = {};
      this.#entries.set(source, entry);
    }
    return entry;
  }

  #release(entry: Entry): string[] {
    const { waiters } = entry;
    entry.waiters = undefined;
    if (waiters === undefined) return [];
    return typeof waiters === 'string' ? [waiters] : [...waiters];
  }
}
