// Follows the benchmark's Deployments through a watch of its own and notes when each one is
// reconciled: every image points into the backup namespace and the project's finalizer is gone.
// That is the API server's word, not the bridge's.

import { performance } from 'node:perf_hooks';
import { FINALIZER } from '../bridge/workload.ts';
import type { WatchEvent } from './bridge-kube-api.ts';

interface Observed {
  metadata?: { namespace?: string; name?: string; finalizers?: string[] | null };
  spec?: { template?: { spec?: { containers?: { image?: string }[]; initContainers?: { image?: string }[] | null } } };
}

export function imagesOf(object: Observed): string[] {
  const spec = object.spec?.template?.spec;
  return [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])].map((container) => container.image ?? '');
}

export class ReconcileTracker {
  readonly #backupPrefix: string;
  readonly #tracked: ReadonlySet<string>;
  /** Tracked keys not reconciled yet. */
  readonly #pending: Set<string>;
  #allDone: (() => void) | undefined;
  /** performance.now() when the last pending key was reconciled. */
  lastReconciledAt: number | undefined;
  /** After a change: the backup image the key must end up with, and when it did. */
  readonly #expected = new Map<string, string>();
  readonly repatchedAt = new Map<string, number>();
  /** After a change: the new image, and when this watch first saw the key holding it. */
  readonly #changedTo = new Map<string, string>();
  readonly changeSeenAt = new Map<string, number>();
  events = 0;

  constructor(keys: Iterable<string>, backupPrefix: string) {
    this.#tracked = new Set(keys);
    this.#pending = new Set(this.#tracked);
    this.#backupPrefix = backupPrefix;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /** Resolves once every tracked key has been seen reconciled. */
  allReconciled(): Promise<void> {
    if (this.#pending.size === 0) return Promise.resolve();
    return new Promise((resolve) => (this.#allDone = resolve));
  }

  /**
   * `key` is being changed to `image`: note when a watch delivers that change (what the API
   * server's watch latency alone costs), and count the key as reconciled again once it holds
   * `backupImage`.
   */
  expect(key: string, image: string, backupImage: string): void {
    this.#changedTo.set(key, image);
    this.#expected.set(key, backupImage);
  }

  get awaiting(): number {
    return this.#expected.size;
  }

  onEvent(event: WatchEvent): void {
    if (event.type !== 'ADDED' && event.type !== 'MODIFIED') return;
    const object = event.object as Observed;
    const key = `${object.metadata?.namespace}/${object.metadata?.name}`;
    if (!this.#tracked.has(key)) return;
    this.events++;
    const images = imagesOf(object);
    const changedTo = this.#changedTo.get(key);
    if (changedTo !== undefined && images.includes(changedTo)) {
      this.#changedTo.delete(key);
      this.changeSeenAt.set(key, performance.now());
    }
    const reconciled =
      images.every((image) => image.startsWith(this.#backupPrefix)) && !(object.metadata?.finalizers ?? []).includes(FINALIZER);
    if (!reconciled) return;
    const now = performance.now();
    if (this.#pending.delete(key) && this.#pending.size === 0) {
      this.lastReconciledAt = now;
      this.#allDone?.();
    }
    const expected = this.#expected.get(key);
    if (expected !== undefined && images.includes(expected)) {
      this.#expected.delete(key);
      this.repatchedAt.set(key, now);
    }
  }
}
