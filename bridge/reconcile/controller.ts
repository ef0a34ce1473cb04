// Informers feed keys into the work queue, workers run reconcile(key), and a periodic resync
// enqueues every cached key so that nothing depends on an event having been seen. One Controller
// lives for one term of leadership: stop() is final, a new term gets a new one (fresh caches).

import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeError } from '../../lib/errors.ts';
import type { CloneClient } from '../function/clone-client.ts';
import type { ImageLedger } from '../function/image-ledger.ts';
import type { WorkloadApi } from '../kube/api.ts';
import type { EventSink } from '../kube/events.ts';
import { WorkloadInformer, type WatchedCollection, type WorkloadInformerOptions } from '../kube/informers.ts';
import { slimWorkload } from '../kube/workload-cache.ts';
import type { BridgeMetrics } from '../metrics.ts';
import {
  keyOf,
  MODE_ANNOTATION,
  parseWorkloadKey,
  WORKLOAD_KINDS,
  type Mode,
  type Workload,
  type WorkloadKind,
  type WorkloadReader,
} from '../workload.ts';
import { modeOf, type DecisionContext } from './decide.ts';
import { Reconciler, StaleWorkloadError, type ReconcilerOptions } from './reconciler.ts';
import { WorkQueue, type WorkQueueOptions } from './work-queue.ts';

export interface ControllerOptions {
  readonly kubeConfig: KubeConfig;
  /** One per watched kind (WATCH_KINDS). */
  readonly apis: Readonly<Partial<Record<WorkloadKind, WorkloadApi>>>;
  /** Namespaces, for their mode annotation; absent, only workloads' own annotations count. */
  readonly namespaces?: WatchedCollection;
  readonly decision: Omit<DecisionContext, 'knownBackup' | 'namespaceMode' | 'goneAtSource'>;
  /** Workloads' pull secrets, read by name (absent: every copy without credentials). */
  readonly pullSecrets?: ReconcilerOptions['pullSecrets'];
  readonly credentialsWithheld?: string;
  readonly workers: number;
  readonly resyncMs: number;
  readonly ledger: ImageLedger;
  readonly cloneClient: Pick<CloneClient, 'request'>;
  readonly events: EventSink;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
  readonly informer?: Pick<WorkloadInformerOptions, 'watchdogMs' | 'restartBaseMs' | 'restartMaxMs'>;
  readonly queue?: Pick<WorkQueueOptions, 'baseDelayMs' | 'maxDelayMs'>;
}

export class Controller implements WorkloadReader {
  readonly #kinds: readonly WorkloadKind[];
  readonly #informers: Readonly<Partial<Record<WorkloadKind, WorkloadInformer>>>;
  readonly #namespaces: WorkloadInformer | undefined;
  readonly queue: WorkQueue;
  readonly #options: ControllerOptions;
  #resyncTimer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: ControllerOptions) {
    this.#options = options;
    const { logger, metrics } = options;
    this.#kinds = WORKLOAD_KINDS.filter((kind) => options.apis[kind] !== undefined);
    const informer = (collection: WatchedCollection, onChange: (object: Workload) => void) =>
      new WorkloadInformer({ ...options.informer, kubeConfig: options.kubeConfig, collection, logger, metrics, onChange });
    this.#informers = Object.fromEntries(
      this.#kinds.map((kind) => {
        const api = options.apis[kind]!;
        const collection = { ...api, project: (object: unknown) => slimWorkload(kind, object) };
        return [
          kind,
          informer(collection, (workload) => {
            const key = keyOf(kind, workload);
            // Ahead of resyncs and follow-ups: a change reaches the function even while workers patch.
            if (key !== undefined) this.queue.add(key, { urgent: true });
          }),
        ];
      }),
    );
    // A namespace's mode annotation changed (or was first seen): its workloads are looked at again.
    this.#namespaces =
      options.namespaces && informer(options.namespaces, (namespace) => this.#enqueueNamespace(namespace.metadata?.name ?? ''));
    const reconciler = new Reconciler({
      apis: options.apis,
      cache: this,
      decision: { ...options.decision, namespaceMode: (namespace) => this.#namespaceMode(namespace) },
      ledger: options.ledger,
      cloneClient: options.cloneClient,
      events: options.events,
      metrics,
      logger,
      ...(options.pullSecrets && { pullSecrets: options.pullSecrets }),
      ...(options.credentialsWithheld !== undefined && { credentialsWithheld: options.credentialsWithheld }),
    });
    this.queue = new WorkQueue((key) => reconciler.reconcile(key), {
      ...options.queue,
      concurrency: options.workers,
      onError: (key, error, retryInMs) => {
        const ref = parseWorkloadKey(key);
        const fields = { kind: ref?.kind, namespace: ref?.namespace, name: ref?.name, retryInMs };
        if (error instanceof StaleWorkloadError) logger.debug(fields, 'reconcile retried: workload changed');
        else
          logger.warn({ ...fields, error: describeError(error) }, `${ref?.kind ?? 'workload'} reconciler: reconciliation failed`);
      },
      onComplete: (key, completion, ms) => {
        const kind = parseWorkloadKey(key)?.kind ?? 'unknown';
        metrics.reconciles.inc({ kind, result: completion });
        metrics.reconcileDuration.observe({ kind }, ms / 1000);
      },
    });
  }

  /** Lists and watches every kind (and the namespaces), then starts the workers; resolves once all caches are filled. */
  async start(): Promise<void> {
    await Promise.all(this.#all().map((informer) => informer.start()));
    if (this.#stopped) return;
    this.queue.start();
    this.#resyncTimer = setInterval(() => this.resync(), this.#options.resyncMs);
    this.#resyncTimer.unref();
    const counts = Object.fromEntries(this.#kinds.map((kind) => [kind, this.#informers[kind]!.list().length]));
    this.#options.logger.info({ ...counts, namespaces: this.#namespaces?.list().length }, 'watching workloads');
  }

  get synced(): boolean {
    return this.#all().every((informer) => informer.synced);
  }

  /** A workload as the informers' cache holds it; undefined for a kind not watched. */
  get(kind: WorkloadKind, namespace: string, name: string): Workload | undefined {
    return this.#informers[kind]?.get(namespace, name);
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  /** Enqueues every cached workload: level-triggered, whatever events were missed. */
  resync(): void {
    this.#options.ledger.prune();
    for (const kind of this.#kinds) {
      for (const workload of this.#informers[kind]!.list()) {
        const key = keyOf(kind, workload);
        if (key !== undefined) this.queue.add(key);
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#resyncTimer);
    await Promise.all(this.#all().map((informer) => informer.stop()));
    await this.queue.shutdown();
  }

  #all(): WorkloadInformer[] {
    return [...this.#kinds.map((kind) => this.#informers[kind]!), ...(this.#namespaces ? [this.#namespaces] : [])];
  }

  #namespaceMode(namespace: string): Mode | undefined {
    const cached = this.#namespaces?.get('', namespace) as { metadata?: { annotations?: Record<string, string> } } | undefined;
    return modeOf(cached?.metadata?.annotations?.[MODE_ANNOTATION]);
  }

  #enqueueNamespace(namespace: string): void {
    if (namespace === '') return;
    for (const kind of this.#kinds) {
      for (const workload of this.#informers[kind]!.list(namespace)) {
        const key = keyOf(kind, workload);
        if (key !== undefined) this.queue.add(key);
      }
    }
  }
}
