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
import { WorkloadInformer, type WorkloadInformerOptions } from '../kube/informers.ts';
import type { BridgeMetrics } from '../metrics.ts';
import { WORKLOAD_KINDS, keyOf, parseWorkloadKey, type Workload, type WorkloadKind, type WorkloadReader } from '../workload.ts';
import type { DecisionContext } from './decide.ts';
import { Reconciler, StaleWorkloadError } from './reconciler.ts';
import { WorkQueue, type WorkQueueOptions } from './work-queue.ts';

export interface ControllerOptions {
  readonly kubeConfig: KubeConfig;
  readonly apis: Readonly<Record<WorkloadKind, WorkloadApi>>;
  readonly decision: Omit<DecisionContext, 'knownBackup'>;
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
  readonly #informers: Readonly<Record<WorkloadKind, WorkloadInformer>>;
  readonly queue: WorkQueue;
  readonly #options: ControllerOptions;
  #resyncTimer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(options: ControllerOptions) {
    this.#options = options;
    const { logger, metrics } = options;
    const informer = (kind: WorkloadKind) =>
      new WorkloadInformer({
        ...options.informer,
        kubeConfig: options.kubeConfig,
        api: options.apis[kind],
        logger,
        metrics,
        onChange: (workload: Workload) => {
          const key = keyOf(kind, workload);
          // Ahead of resyncs and follow-ups: a change reaches the function even while workers patch.
          if (key !== undefined) this.queue.add(key, { urgent: true });
        },
      });
    this.#informers = { Deployment: informer('Deployment'), DaemonSet: informer('DaemonSet') };
    const reconciler = new Reconciler({
      apis: options.apis,
      cache: this,
      decision: options.decision,
      ledger: options.ledger,
      cloneClient: options.cloneClient,
      events: options.events,
      metrics,
      logger,
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

  /** Lists and watches both kinds, then starts the workers; resolves once both caches are filled. */
  async start(): Promise<void> {
    await Promise.all(WORKLOAD_KINDS.map((kind) => this.#informers[kind].start()));
    if (this.#stopped) return;
    this.queue.start();
    this.#resyncTimer = setInterval(() => this.resync(), this.#options.resyncMs);
    this.#resyncTimer.unref();
    this.#options.logger.info(
      { deployments: this.#informers.Deployment.list().length, daemonsets: this.#informers.DaemonSet.list().length },
      'watching workloads',
    );
  }

  get synced(): boolean {
    return WORKLOAD_KINDS.every((kind) => this.#informers[kind].synced);
  }

  /** A workload as the informers' cache holds it. */
  get(kind: WorkloadKind, namespace: string, name: string): Workload | undefined {
    return this.#informers[kind].get(namespace, name);
  }

  enqueue(key: string): void {
    this.queue.add(key);
  }

  /** Enqueues every cached workload: level-triggered, whatever events were missed. */
  resync(): void {
    this.#options.ledger.prune();
    for (const kind of WORKLOAD_KINDS) {
      for (const workload of this.#informers[kind].list()) {
        const key = keyOf(kind, workload);
        if (key !== undefined) this.queue.add(key);
      }
    }
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#resyncTimer);
    await Promise.all(WORKLOAD_KINDS.map((kind) => this.#informers[kind].stop()));
    await this.queue.shutdown();
  }
}
