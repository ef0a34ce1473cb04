// Kubernetes Events on workloads, so `kubectl describe` tells what happened to their images. A
// repeat of the same event within a while bumps the count of the existing one (a patch) instead of
// creating another, the way client-go's recorder aggregates. Best effort: a lost event never
// fails a reconcile. Writes are bounded like client-go's broadcaster (a few at a time, at most
// 1000 waiting, the rest dropped): a first sync of thousands of workloads records two events
// each, and those must neither flood the API server ahead of the patches that matter nor pile up
// in memory while it is slow. When the queue is full, a Warning (a failed backup) takes the place
// of a waiting Normal event rather than being dropped.

import type { KubeConfig } from '@kubernetes/client-node';
import { createHash, randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { describeError } from '../../lib/errors.ts';
import { apiVersionOf, PROTECTED_NAMESPACE, type WorkloadKind } from '../workload.ts';
import { kubeJson } from './api.ts';

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
  /** Events waiting for a write beyond those (default 1000); more are dropped, Normal ones first. */
  readonly maxQueued?: number;
  /** Called for each event dropped (the bridge counts them in /metrics). */
  readonly onDropped?: () => void;
}

interface Tracked {
  readonly name: string;
  readonly namespace: string;
  count: number;
  readonly until: number;
}

interface PendingEvent {
  readonly object: InvolvedObject;
  readonly type: EventType;
  readonly reason: string;
  readonly message: string;
}

export class EventRecorder implements EventSink {
  readonly #kubeConfig: KubeConfig;
  readonly #logger: Logger;
  readonly #instance: string;
  readonly #aggregateMs: number;
  readonly #maxTracked: number;
  readonly #tracked = new Map<string, Tracked>();
  readonly #maxConcurrentWrites: number;
  readonly #maxQueued: number;
  readonly #onDropped: (() => void) | undefined;
  /** Events waiting for a writer, oldest first. */
  readonly #queue: PendingEvent[] = [];
  /** Writers draining the queue; at most maxConcurrentWrites, and the queue is empty while fewer. */
  #writers = 0;
  readonly #draining = new Set<Promise<void>>();
  #dropped = 0;

  constructor(options: EventRecorderOptions) {
    this.#kubeConfig = options.kubeConfig;
    this.#logger = options.logger;
    this.#instance = options.instance;
    this.#aggregateMs = options.aggregateMs ?? 10 * 60_000;
    this.#maxTracked = options.maxTracked ?? 4096;
    this.#maxConcurrentWrites = options.maxConcurrentWrites ?? 2;
    this.#maxQueued = options.maxQueued ?? 1000;
    this.#onDropped = options.onDropped;
  }

  /** Events dropped so far because too many were waiting. */
  get dropped(): number {
    return this.#dropped;
  }

  record(object: InvolvedObject, type: EventType, reason: string, message: string): void {
    // kube-system is written by nobody but its owners: not even an Event (decide never acts there).
    if (object.namespace === PROTECTED_NAMESPACE) return;
    const writerFree = this.#writers < this.#maxConcurrentWrites;
    if (!writerFree && this.#queue.length >= this.#maxQueued && !this.#makeRoomFor(type)) {
      this.#noteDropped();
      return;
    }
    this.#queue.push({ object, type, reason, message: message.slice(0, 1024) });
    if (writerFree) this.#startWriter();
  }

  /** Waits for events being written and waiting (used on shutdown and by tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.#draining]);
  }

  /** A Warning takes the place of the oldest waiting Normal event: failures matter more than successes. */
  #makeRoomFor(type: EventType): boolean {
    const normal = type === 'Warning' ? this.#queue.findIndex((waiting) => waiting.type === 'Normal') : -1;
    if (normal === -1) return false;
    this.#queue.splice(normal, 1);
    this.#noteDropped();
    return true;
  }

  #startWriter(): void {
    this.#writers++;
    const drain = this.#drain();
    this.#draining.add(drain);
    void drain.finally(() => this.#draining.delete(drain));
  }

  /** Writes queued events one after another until none is left; never rejects. */
  async #drain(): Promise<void> {
    for (let next = this.#queue.shift(); next !== undefined; next = this.#queue.shift()) {
      const { object, type, reason, message } = next;
      try {
        await this.#write(object, type, reason, message);
      } catch (error) {
        this.#logger.debug(
          { kind: object.kind, namespace: object.namespace, name: object.name, reason, error: describeError(error) },
          'event not recorded',
        );
      }
    }
    // In the same turn as the last shift: a record() from now on sees a free writer.
    this.#writers--;
  }

  #noteDropped(): void {
    this.#dropped++;
    this.#onDropped?.();
    // Once per burst rather than once per event: the first, then every thousandth.
    if (this.#dropped % 1000 === 1) {
      this.#logger.warn({ dropped: this.#dropped }, 'events dropped: the API server is not keeping up with them');
    }
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
          apiVersion: apiVersionOf(object.kind),
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
