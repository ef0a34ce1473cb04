// A client-node informer (list, then watch; a local cache of the collection) that does not die
// quietly. client-node 2.x reconnects by itself after a watch times out (30 s without data) and
// relists after 410 Gone, but on any other error (API server down, 5xx, a failed list) it emits
// "error" and stops for good. This wrapper restarts it with backoff, and a watchdog replaces an
// informer that shows no sign of life for too long.

import type { Informer, KubeConfig, KubernetesObject, makeInformer, ObjectCache } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { equalJitterDelay, type BackoffBounds } from '../../lib/backoff.ts';
import { describeError } from '../../lib/errors.ts';
import type { BridgeMetrics } from '../metrics.ts';
import type { Workload } from '../workload.ts';
import { statusCode, type WorkloadApi } from './api.ts';
import { LIST_PAGE_SIZE, listInPages, makeSlimInformer, type Projection } from './workload-cache.ts';

export type ChangeType = 'add' | 'update' | 'delete';

/** A collection watched across all namespaces, and what of each object the cache keeps. */
export interface WatchedCollection extends Pick<WorkloadApi, 'watchPath' | 'list'> {
  /** For logs and metrics: "Deployment", "Namespace". */
  readonly kind: string;
  readonly project: Projection;
}

export interface WorkloadInformerOptions {
  readonly kubeConfig: KubeConfig;
  readonly collection: WatchedCollection;
  readonly onChange: (workload: Workload, change: ChangeType) => void;
  readonly logger: Logger;
  readonly metrics: BridgeMetrics;
  /**
   * Replace the informer when neither an event nor a (re)connect was seen for this long. A healthy
   * but quiet watch reconnects every 30 s (client-node's read timeout), so this is well above it.
   */
  readonly watchdogMs?: number;
  readonly restartBaseMs?: number;
  readonly restartMaxMs?: number;
  /**
   * Builds the informer: by default one whose cache holds projected workloads (workload-cache.ts),
   * with client-node's makeInformer contract; replaceable so tests can stage failures.
   */
  readonly makeInformer?: typeof makeInformer;
}

type CachedInformer = Informer<KubernetesObject> & ObjectCache<KubernetesObject>;

export class WorkloadInformer {
  readonly kind: string;
  readonly #options: WorkloadInformerOptions;
  readonly #watchdogMs: number;
  readonly #restartBackoff: BackoffBounds;
  #informer: CachedInformer | undefined;
  /** Bumped whenever the informer is replaced or stopped: callbacks of older ones are ignored. */
  #generation = 0;
  #synced = false;
  #stopped = true;
  #lastActivity = 0;
  #consecutiveFailures = 0;
  #restartTimer: NodeJS.Timeout | undefined;
  #watchdogTimer: NodeJS.Timeout | undefined;
  #syncWaiters: (() => void)[] = [];

  constructor(options: WorkloadInformerOptions) {
    this.kind = options.collection.kind;
    this.#options = options;
    this.#watchdogMs = options.watchdogMs ?? 120_000;
    this.#restartBackoff = { baseMs: options.restartBaseMs ?? 1_000, maxMs: options.restartMaxMs ?? 30_000 };
  }

  /** Starts listing and watching; resolves once the first list is in the cache (or on stop). */
  start(): Promise<void> {
    if (!this.#stopped) return this.waitForSync();
    this.#stopped = false;
    this.#launch(this.#create());
    const checkEvery = Math.max(Math.floor(this.#watchdogMs / 4), 10);
    this.#watchdogTimer = setInterval(() => this.#checkWatchdog(), checkEvery);
    this.#watchdogTimer.unref();
    return this.waitForSync();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#generation++;
    this.#setSynced(false);
    clearTimeout(this.#restartTimer);
    clearInterval(this.#watchdogTimer);
    const informer = this.#informer;
    this.#informer = undefined;
    // Whoever waits for a sync that will not come now (a start cut short) may go on.
    const waiters = this.#syncWaiters;
    this.#syncWaiters = [];
    for (const resolve of waiters) resolve();
    await informer?.stop();
  }

  get synced(): boolean {
    return this.#synced;
  }

  waitForSync(): Promise<void> {
    if (this.#synced) return Promise.resolve();
    return new Promise((resolve) => this.#syncWaiters.push(resolve));
  }

  get(namespace: string, name: string): Workload | undefined {
    return this.#informer?.get(name, namespace) as Workload | undefined;
  }

  /** Everything cached, or what is cached in one namespace. */
  list(namespace?: string): readonly Workload[] {
    return (this.#informer?.list(namespace) ?? []) as readonly Workload[];
  }

  #create(): CachedInformer {
    const { collection, kubeConfig } = this.#options;
    const generation = ++this.#generation;
    const make: typeof makeInformer =
      this.#options.makeInformer ?? ((config, path, list) => makeSlimInformer(collection.project, config, path, list));
    const informer = make<KubernetesObject>(kubeConfig, collection.watchPath, () =>
      listInPages(collection.project, (token) =>
        collection.list({ limit: LIST_PAGE_SIZE, ...(token !== undefined && { continue: token }) }),
      ),
    );
    const current = () => generation === this.#generation && !this.#stopped;
    const forward = (change: ChangeType) => (object: KubernetesObject) => {
      if (!current()) return;
      this.#lastActivity = Date.now();
      this.#options.onChange(object as Workload, change);
    };
    informer.on('add', forward('add'));
    informer.on('update', forward('update'));
    informer.on('delete', forward('delete'));
    informer.on('connect', () => {
      if (current()) this.#lastActivity = Date.now();
    });
    informer.on('error', (error) => {
      // Our own stop() aborts the watch, which client-node reports as an error too.
      if (current()) this.#failed(informer, error);
    });
    this.#informer = informer;
    return informer;
  }

  /** Starts (or restarts, after an error stopped it) an informer and notes when it has synced. */
  #launch(informer: CachedInformer): void {
    const generation = this.#generation;
    this.#lastActivity = Date.now();
    let failedDuringStart = false;
    const onError = () => (failedDuringStart = true);
    informer.on('error', onError);
    informer.start().then(
      () => {
        informer.off('error', onError);
        if (failedDuringStart || generation !== this.#generation || this.#stopped) return;
        this.#consecutiveFailures = 0;
        this.#setSynced(true);
        this.#options.logger.debug({ kind: this.kind, objects: informer.list().length }, 'informer synced');
      },
      (error: unknown) => {
        informer.off('error', onError);
        // start() rejects only before the watch request is made (no cluster, credentials unreadable).
        if (generation === this.#generation && !this.#stopped) this.#failed(informer, error);
      },
    );
  }

  #failed(informer: CachedInformer, error: unknown): void {
    if (this.#restartTimer !== undefined) return;
    this.#setSynced(false);
    this.#consecutiveFailures++;
    const delay = equalJitterDelay(this.#consecutiveFailures - 1, this.#restartBackoff);
    this.#options.metrics.watchRestarts.inc({ kind: this.kind, reason: 'error' });
    this.#options.logger.warn(
      { kind: this.kind, error: describeError(error), status: statusCode(error), retryInMs: delay },
      'watch failed; restarting it',
    );
    const generation = this.#generation;
    this.#restartTimer = setTimeout(() => {
      this.#restartTimer = undefined;
      if (generation !== this.#generation || this.#stopped) return;
      // A client-node informer that reported an error has stopped itself and holds no request:
      // starting it again keeps its cache and resourceVersion (it relists if that is too old).
      this.#launch(informer);
    }, delay);
    this.#restartTimer.unref();
  }

  #checkWatchdog(): void {
    if (this.#stopped || this.#restartTimer !== undefined) return;
    const silentMs = Date.now() - this.#lastActivity;
    if (silentMs < this.#watchdogMs) return;
    this.#options.metrics.watchRestarts.inc({ kind: this.kind, reason: 'silent' });
    this.#options.logger.warn({ kind: this.kind, silentMs }, 'watch silent for too long; replacing the informer');
    // A fresh informer rather than stop()+start() on the old one: the old one's abort reaches
    // its done handler asynchronously and would otherwise abort the new watch request.
    const old = this.#informer;
    this.#setSynced(false);
    this.#launch(this.#create());
    void old?.stop();
  }

  #setSynced(synced: boolean): void {
    this.#synced = synced;
    this.#options.metrics.informerSynced.set({ kind: this.kind }, synced ? 1 : 0);
    if (!synced) return;
    const waiters = this.#syncWaiters;
    this.#syncWaiters = [];
    for (const resolve of waiters) resolve();
  }
}
