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
import type { WorkloadKind } from '../workload.ts';
import { describeError, kubeJson } from './api.ts';

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
  readonly #onDropped: (() => void) | undefined;
  #writing = 0;
  readonly #waiting: { readonly type: EventType; readonly start: (granted: boolean) => void }[] = [];
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
    const slot = this.#acquire(type);
    if (slot === undefined) {
      this.#noteDropped();
      return;
    }
    const write = slot.then(async (granted) => {
      if (!granted) return; // a Warning took its place in the queue
      try {
        await this.#write(object, type, reason, message.slice(0, 1024));
      } catch (error) {
        this.#logger.debug(
          { kind: object.kind, namespace: object.namespace, name: object.name, reason, error: describeError(error) },
          'event not recorded',
        );
      } finally {
        this.#release();
      }
    });
    this.#pending.add(write);
    void write.finally(() => this.#pending.delete(write));
  }

  /** Waits for events being written (used on shutdown and by tests). */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending]);
  }

  /**
   * A write slot: at once while fewer than maxConcurrentWrites are being written, else a place in
   * the queue (resolving true when a finishing write hands its slot over, false when a Warning
   * took the place). Undefined when the queue is full: a Warning then takes the place of the
   * oldest waiting Normal event, if there is one, since failures matter more than successes.
   */
  #acquire(type: EventType): Promise<boolean> | undefined {
    if (this.#writing < this.#maxConcurrentWrites) {
      this.#writing++;
      return Promise.resolve(true);
    }
    if (this.#waiting.length >= this.#maxQueued) {
      const normal = type === 'Warning' ? this.#waiting.findIndex((waiting) => waiting.type === 'Normal') : -1;
      if (normal === -1) return undefined;
      const [evicted] = this.#waiting.splice(normal, 1);
      evicted!.start(false);
      this.#noteDropped();
    }
    return new Promise<boolean>((start) => this.#waiting.push({ type, start }));
  }

  #release(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next.start(true);
    else this.#writing--;
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
