// Kubernetes Events on workloads, so `kubectl describe` tells what happened to their images. A
// repeat of the same event within a while bumps the count of the existing one (a patch) instead of
// creating another, the way client-go's recorder aggregates. Best effort: a lost event never
// fails a reconcile.

import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig } from '@kubernetes/client-node';
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { describeError, timeoutOptions } from './kube.ts';
import type { WorkloadKind } from './workload.ts';

export const EVENT_COMPONENT = 'image-clone-controller';

export interface InvolvedObject {
  readonly kind: WorkloadKind;
  readonly namespace: string;
  readonly name: string;
  readonly uid?: string | undefined;
  readonly resourceVersion?: string | undefined;
}

export type EventType = 'Normal' | 'Warning';

export interface EventSink {
  record(object: InvolvedObject, type: EventType, reason: string, message: string): void;
}

export interface EventRecorderOptions {
  readonly kubeConfig: KubeConfig;
  readonly logger: Logger;
  /** The reporting instance (the pod's name). */
  readonly instance: string;
  /** Identical events within this window are counted on one Event. */
  readonly aggregateMs?: number;
  readonly maxTracked?: number;
}

interface Tracked {
  readonly name: string;
  readonly namespace: string;
  count: number;
  readonly until: number;
}

export class EventRecorder implements EventSink {
  readonly #core: CoreV1Api;
  readonly #logger: Logger;
  readonly #instance: string;
  readonly #aggregateMs: number;
  readonly #maxTracked: number;
  readonly #tracked = new Map<string, Tracked>();
  readonly #pending = new Set<Promise<void>>();

  constructor(options: EventRecorderOptions) {
    this.#core = options.kubeConfig.makeApiClient(CoreV1Api);
    this.#logger = options.logger;
    this.#instance = options.instance;
    this.#aggregateMs = options.aggregateMs ?? 10 * 60_000;
    this.#maxTracked = options.maxTracked ?? 4096;
  }

  record(object: InvolvedObject, type: EventType, reason: string, message: string): void {
    const write = this.#write(object, type, reason, message.slice(0, 1024)).catch((error: unknown) => {
      this.#logger.debug(
        { kind: object.kind, namespace: object.namespace, name: object.name, reason, error: describeError(error) },
        'event not recorded',
      );
    });
    this.#pending.add(write);
    void write.finally(() => this.#pending.delete(write));
  }

  /** Waits for events being written (used on shutdown and by tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending]);
  }

  async #write(object: InvolvedObject, type: EventType, reason: string, message: string): Promise<void> {
    const now = new Date();
    const id = `${object.uid ?? `${object.kind}/${object.namespace}/${object.name}`}\0${type}\0${reason}\0${message}`;
    const tracked = this.#tracked.get(id);
    if (tracked !== undefined && tracked.until > now.getTime()) {
      tracked.count++;
      try {
        await this.#core.patchNamespacedEvent(
          { name: tracked.name, namespace: tracked.namespace, body: { count: tracked.count, lastTimestamp: now.toISOString() } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch, timeoutOptions(10_000)),
        );
        return;
      } catch {
        // The Event may have expired (the API server keeps them about an hour): create a new one.
        this.#tracked.delete(id);
      }
    }
    const name = `${object.name}.${randomBytes(8).toString('hex')}`;
    await this.#core.createNamespacedEvent(
      {
        namespace: object.namespace,
        body: {
          metadata: { name, namespace: object.namespace },
          involvedObject: {
            apiVersion: 'apps/v1',
            kind: object.kind,
            namespace: object.namespace,
            name: object.name,
            ...(object.uid !== undefined && { uid: object.uid }),
            ...(object.resourceVersion !== undefined && { resourceVersion: object.resourceVersion }),
          },
          type,
          reason,
          message,
          count: 1,
          firstTimestamp: now,
          lastTimestamp: now,
          source: { component: EVENT_COMPONENT },
          reportingComponent: EVENT_COMPONENT,
          reportingInstance: this.#instance,
        },
      },
      timeoutOptions(10_000),
    );
    this.#tracked.set(id, { name, namespace: object.namespace, count: 1, until: now.getTime() + this.#aggregateMs });
    while (this.#tracked.size > this.#maxTracked) this.#tracked.delete(this.#tracked.keys().next().value as string);
  }
}
