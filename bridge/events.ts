// Kubernetes Events on workloads, so `kubectl describe` tells what happened to their images. A
// repeat of the same event within a while bumps the count of the existing one (a patch) instead of
// creating another, the way client-go's recorder aggregates. Best effort: a lost event never
// fails a reconcile. Writes are bounded like client-go's broadcaster (a few at a time, at most
// 1000 waiting, the rest dropped): a first sync of thousands of workloads records two events
// each, and those must neither flood the API server ahead of the patches that matter nor pile up
// in memory while it is slow.

import type { KubeConfig } from '@kubernetes/client-node';
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { describeError, kubeJson } from './kube.ts';
import type { WorkloadKind } from './workload.ts';

export const EVENT_COMPONENT = 'image-clone-controller';
const WRITE_TIMEOUT_MS = 10_000;

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
  /** Events written at once (default 2). */
  readonly maxConcurrentWrites?: number;
  /** Events waiting for a write beyond those (default 1000); more are dropped. */
  readonly maxQueued?: number;
}

interface Tracked {
  readonly name: string;
  readonly namespace: string;
  count: number;
  readonly until: number;
}

export class EventRecorder implements EventSink {
  readonly #kubeConfig: KubeConfig;
  readonly #logger: Logger;
  readonly #instance: string;
  readonly #aggregateMs: number;
  readonly #maxTracked: number;
  readonly #tracked = new Map<string, Tracked>();
  readonly #pending = new Set<Promise<void>>();
  readonly #maxConcurrentWrites: number;
  readonly #maxQueued: number;
  #writing = 0;
  readonly #waiting: (() => void)[] = [];
  #dropped = 0;

  constructor(options: EventRecorderOptions) {
    this.#kubeConfig = options.kubeConfig;
    this.#logger = options.logger;
    this.#instance = options.instance;
    this.#aggregateMs = options.aggregateMs ?? 10 * 60_000;
    this.#maxTracked = options.maxTracked ?? 4096;
    this.#maxConcurrentWrites = options.maxConcurrentWrites ?? 2;
    this.#maxQueued = options.maxQueued ?? 1000;
  }

  /** Events dropped so far because too many were waiting. */
  get dropped(): number {
    return this.#dropped;
  }

  record(object: InvolvedObject, type: EventType, reason: string, message: string): void {
    if (this.#waiting.length >= this.#maxQueued) {
      this.#dropped++;
      // Once per burst rather than once per event: the first, then every thousandth.
      if (this.#dropped % 1000 === 1) {
        this.#logger.warn({ dropped: this.#dropped }, 'events dropped: the API server is not keeping up with them');
      }
      return;
    }
    const write = this.#acquire()
      .then(() => this.#write(object, type, reason, message.slice(0, 1024)))
      .catch((error: unknown) => {
        this.#logger.debug(
          { kind: object.kind, namespace: object.namespace, name: object.name, reason, error: describeError(error) },
          'event not recorded',
        );
      })
      .finally(() => this.#release());
    this.#pending.add(write);
    void write.finally(() => this.#pending.delete(write));
  }

  /** Waits for events being written (used on shutdown and by tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending]);
  }

  async #acquire(): Promise<void> {
    if (this.#writing < this.#maxConcurrentWrites) {
      this.#writing++;
      return;
    }
    // A finishing write hands its slot over directly, so none is taken twice.
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next();
    else this.#writing--;
  }

  async #write(object: InvolvedObject, type: EventType, reason: string, message: string): Promise<void> {
    const now = new Date();
    // A digest, not the text: thousands of tracked events would otherwise hold their messages.
    const id = createHash('sha256')
      .update(`${object.uid ?? `${object.kind}/${object.namespace}/${object.name}`}\0${type}\0${reason}\0${message}`)
      .digest('base64url');
    const tracked = this.#tracked.get(id);
    if (tracked !== undefined && tracked.until > now.getTime()) {
      tracked.count++;
      try {
        await kubeJson(this.#kubeConfig, {
          method: 'PATCH',
          path: `/api/v1/namespaces/${encodeURIComponent(tracked.namespace)}/events/${encodeURIComponent(tracked.name)}`,
          body: { count: tracked.count, lastTimestamp: now.toISOString() },
          contentType: 'application/merge-patch+json',
          timeoutMs: WRITE_TIMEOUT_MS,
        });
        return;
      } catch {
        // The Event may have expired (the API server keeps them about an hour): create a new one.
        this.#tracked.delete(id);
      }
    }
    const name = `${object.name}.${randomBytes(8).toString('hex')}`;
    await kubeJson(this.#kubeConfig, {
      method: 'POST',
      path: `/api/v1/namespaces/${encodeURIComponent(object.namespace)}/events`,
      body: {
        apiVersion: 'v1',
        kind: 'Event',
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
        firstTimestamp: now.toISOString(),
        lastTimestamp: now.toISOString(),
        source: { component: EVENT_COMPONENT },
        reportingComponent: EVENT_COMPONENT,
        reportingInstance: this.#instance,
      },
      timeoutMs: WRITE_TIMEOUT_MS,
    });
    this.#tracked.set(id, { name, namespace: object.namespace, count: 1, until: now.getTime() + this.#aggregateMs });
    while (this.#tracked.size > this.#maxTracked) this.#tracked.delete(this.#tracked.keys().next().value as string);
  }
}
