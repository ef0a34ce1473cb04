// Follows the benchmark's workloads through watches of its own and notes when each one is
// reconciled: the project's finalizer is gone and, for a kind the bridge pins (Deployment,
// StatefulSet, CronJob), every image points into the backup namespace. A Pod's images are never
// rewritten (the bridge backs them up only), so for a Pod the released finalizer is the whole
// of it. That is the API server's word, not the bridge's.

import { performance } from 'node:perf_hooks';
import { FINALIZER, KINDS, podSpecOf, type Workload, type WorkloadKind } from '../bridge/workload.ts';
import type { WatchEvent } from './bridge-kube-api.ts';

/** Every image of an object of `kind` (init containers first), as the API server holds it. */
export function imagesOf(kind: WorkloadKind, object: unknown): string[] {
  const spec = podSpecOf(kind, object as Workload);
  return [...(spec?.initContainers ?? []), ...(spec?.containers ?? [])].map((container) => container?.image ?? '');
}

/** Whether an object of `kind` is as the bridge leaves it once its images are backed up. */
export function isReconciled(kind: WorkloadKind, object: unknown, backupPrefix: string): boolean {
  const finalizers = (object as Workload).metadata?.finalizers ?? [];
  if (finalizers.includes(FINALIZER)) return false;
  return !KINDS[kind].pinnable || imagesOf(kind, object).every((image) => image.startsWith(backupPrefix));
}

/** `Kind/namespace/name`, as the bridge keys its work queue. */
export const trackedKey = (kind: WorkloadKind, namespace: string, name: string) => `${kind}/${namespace}/${name}`;

export class ReconcileTracker {
  readonly #backupPrefix: string;
  readonly #tracked: ReadonlySet<string>;
  /** Tracked keys not reconciled yet. */
  readonly #pending: Set<string>;
  #allDone: (() => void) | undefined;
  /** Tracked keys not reconciled yet, per kind. */
  readonly #pendingOfKind = new Map<WorkloadKind, number>();
  /** performance.now() when the last pending key was reconciled, of all and of each kind. */
  lastReconciledAt: number | undefined;
  readonly kindReconciledAt = new Map<WorkloadKind, number>();
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
    for (const key of this.#tracked) {
      const kind = key.slice(0, key.indexOf('/')) as WorkloadKind;
      this.#pendingOfKind.set(kind, (this.#pendingOfKind.get(kind) ?? 0) + 1);
    }
    this.#backupPrefix = backupPrefix;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /** Tracked keys of `kind` not reconciled yet. */
  pendingOf(kind: WorkloadKind): number {
    return this.#pendingOfKind.get(kind) ?? 0;
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

  /** An event of the benchmark's watch of `kind`'s collection. */
  onEvent(kind: WorkloadKind, event: WatchEvent): void {
    if (event.type !== 'ADDED' && event.type !== 'MODIFIED') return;
    const metadata = (event.object as Workload).metadata;
    const key = trackedKey(kind, metadata?.namespace ?? '', metadata?.name ?? '');
    if (!this.#tracked.has(key)) return;
    this.events++;
    const images = imagesOf(kind, event.object);
    const changedTo = this.#changedTo.get(key);
    if (changedTo !== undefined && images.includes(changedTo)) {
      this.#changedTo.delete(key);
      this.changeSeenAt.set(key, performance.now());
    }
    if (!isReconciled(kind, event.object, this.#backupPrefix)) return;
    const now = performance.now();
    if (this.#pending.delete(key)) {
      const left = this.#pendingOfKind.get(kind)! - 1;
      this.#pendingOfKind.set(kind, left);
      if (left === 0) this.kindReconciledAt.set(kind, now);
      if (this.#pending.size === 0) {
        this.lastReconciledAt = now;
        this.#allDone?.();
      }
    }
    const expected = this.#expected.get(key);
    if (expected !== undefined && images.includes(expected)) {
      this.#expected.delete(key);
      this.repatchedAt.set(key, now);
    }
  }
}
