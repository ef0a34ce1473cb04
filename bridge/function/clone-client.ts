// Asks the clone function for copies. One POST /clone per workload with the images it still
// needs; an image already asked for (by this or another workload) is not asked for again until
// its request settles or counts as lost. Requests run in the background: a reconcile never waits
// for a copy, it is enqueued again when the results arrive (or when the request is overdue).
//
// Two modes, one result path: with CALLBACK_URL the function answers 202 and posts signed results
// later (the callback endpoint feeds them to the intake); without it (a function on a FaaS that
// cannot reach the cluster) the bridge reads the answer itself, streamed as NDJSON so that a long
// copy keeps the connection busy, and feeds each result to the same intake as it arrives.

import type { Logger } from 'pino';
import {
  acceptedSchema,
  CONTEXT_LIMITS,
  cloneEventSchema,
  DEFAULT_MAX_IMAGES_PER_REQUEST,
  resultsAnswerSchema,
  type BridgeContext,
} from '../../functions/contract/index.ts';
import { describeError } from '../../lib/errors.ts';
import type { BridgeMetrics } from '../metrics.ts';
import { parseWorkloadKey } from '../workload.ts';
import type { CopyOrder } from './grants.ts';
import type { ImageLedger } from './image-ledger.ts';
import type { ResultIntake } from './intake.ts';
import { parseResults } from './results.ts';

export interface CloneClientOptions {
  /** Base URL of the function; requests go to `${functionUrl}/clone`. */
  readonly functionUrl: string;
  readonly authToken: string;
  readonly callbackUrl: string | undefined;
  /** How long a copy may take before its request counts as lost and may be made again. */
  readonly cloneTimeoutMs: number;
  readonly ledger: ImageLedger;
  readonly intake: ResultIntake;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
  /** The function's MAX_IMAGES_PER_REQUEST (default 50): larger sets are split. */
  readonly maxImagesPerRequest?: number;
  /**
   * Requests open at once (default 16); more wait here. A first sync of thousands of workloads
   * must not open thousands of connections to the function.
   */
  readonly maxConcurrentRequests?: number;
  readonly fetch?: typeof fetch;
  readonly now?: () => number;
}

export interface CloneRequestOutcome {
  /** Sources sent in a new request now. */
  readonly sent: readonly string[];
  /** When the workload should be looked at again at the latest (a request overdue, a retry due). */
  readonly recheckInMs: number | undefined;
}

const ACCEPT_TIMEOUT_MS = 30_000;
const MAX_LINE_CHARS = 4 * 1024 * 1024;

export class CloneClient {
  readonly #options: CloneClientOptions;
  readonly #fetch: typeof fetch;
  readonly #now: () => number;
  readonly #maxImages: number;
  /** Requests open now, at most #maxConcurrent. */
  readonly #open = new Set<Promise<void>>();
  readonly #maxConcurrent: number;
  /**
   * Requests waiting for a slot, oldest first from #waitingFrom: plain records rather than
   * suspended calls, since a first sync queues one per workload (tens of thousands).
   */
  readonly #waiting: ({ readonly key: string; readonly orders: readonly CopyOrder[] } | undefined)[] = [];
  #waitingFrom = 0;

  constructor(options: CloneClientOptions) {
    this.#options = options;
    this.#fetch = options.fetch ?? fetch;
    this.#now = options.now ?? Date.now;
    this.#maxImages = options.maxImagesPerRequest ?? DEFAULT_MAX_IMAGES_PER_REQUEST;
    this.#maxConcurrent = options.maxConcurrentRequests ?? 16;
  }

  get mode(): 'callback' | 'synchronous' {
    return this.#options.callbackUrl === undefined ? 'synchronous' : 'callback';
  }

  /**
   * Requests the copies `key` needs that nobody has asked for yet (a copy with other credentials
   * is another copy); never waits for one. Plain sources are copies without credentials.
   */
  request(key: string, copies: readonly (CopyOrder | string)[]): CloneRequestOutcome {
    const { ledger } = this.#options;
    const now = this.#now();
    const send: CopyOrder[] = [];
    let recheckAt: number | undefined;
    const recheck = (at: number) => (recheckAt = recheckAt === undefined ? at : Math.min(recheckAt, at));

    const orders = new Map(
      copies.map((copy) => (typeof copy === 'string' ? { source: copy, key: copy } : copy)).map((o) => [o.key, o]),
    );
    for (const order of orders.values()) {
      const status = ledger.status(order.key);
      if (status.state === 'in-flight') {
        ledger.wait(order.key, key);
        recheck(status.until);
      } else if (status.state === 'failed') {
        ledger.wait(order.key, key);
        recheck(status.retryAt);
      } else if (status.state === 'backed-up') {
        recheck(now);
      } else {
        send.push(order);
      }
    }
    if (send.length > 0) {
      const until = now + this.#options.cloneTimeoutMs;
      for (const order of send) {
        ledger.begin(order.key, until);
        ledger.wait(order.key, key);
      }
      recheck(until);
      // One request carries each source once: the function answers by source.
      for (const batch of batches(key, send, this.#maxImages)) this.#waiting.push({ key, orders: batch });
      this.#sendWaiting();
    }
    return {
      sent: send.map((order) => order.source),
      recheckInMs: recheckAt === undefined ? undefined : Math.max(0, recheckAt - now),
    };
  }

  /** Waits for the requests in progress (synchronous ones last as long as their copies). */
  async settle(): Promise<void> {
    while (this.#open.size > 0) await Promise.all([...this.#open]);
  }

  /** Opens requests from the waiting ones while slots are free. */
  #sendWaiting(): void {
    while (this.#open.size < this.#maxConcurrent && this.#waitingFrom < this.#waiting.length) {
      const { key, orders } = this.#waiting[this.#waitingFrom]!;
      this.#waiting[this.#waitingFrom++] = undefined;
      // Dropped in chunks: shift() on a long array moves all of it each time.
      if (this.#waitingFrom >= 1024 && this.#waitingFrom * 2 >= this.#waiting.length) {
        this.#waiting.splice(0, this.#waitingFrom);
        this.#waitingFrom = 0;
      }
      // Time spent waiting for a slot is not the copy's: its deadline starts when it is sent.
      const until = this.#now() + this.#options.cloneTimeoutMs;
      for (const order of orders) this.#options.ledger.begin(order.key, until);
      const request = this.#send(key, orders).catch((error: unknown) =>
        this.#options.logger.error({ error: describeError(error) }, 'clone request failed unexpectedly'),
      );
      this.#open.add(request);
      void request.finally(() => {
        this.#open.delete(request);
        this.#sendWaiting();
      });
    }
  }

  async #send(key: string, orders: readonly CopyOrder[]): Promise<void> {
    const { functionUrl, authToken, callbackUrl, cloneTimeoutMs, intake, metrics, logger } = this.#options;
    const workload = parseWorkloadKey(key);
    const images = orders.map((order) => order.source);
    for (const order of orders) {
      logger.info(
        {
          image: order.source,
          kind: workload?.kind,
          namespace: workload?.namespace,
          name: workload?.name,
          ...(order.grant && { pullSecret: order.grant.secret }),
        },
        'Image Cloner: starting cloning process',
      );
    }
    // Which images carried the workload's own credentials: their results are kept apart.
    const grants = Object.fromEntries(
      orders.flatMap((order) => (order.grant ? [[order.source, { id: order.grant.id, secret: order.grant.secret }]] : [])),
    );
    const context: BridgeContext = { workloads: [key], ...(Object.keys(grants).length > 0 && { grants }) };
    const body = JSON.stringify({
      images: orders.map((order) => (order.grant ? { image: order.source, credentials: order.grant.credentials } : order.source)),
      ...(callbackUrl !== undefined && { callback: { url: callbackUrl, context } }),
    });
    const settled = new Set<string>();
    const started = this.#now();
    try {
      const response = await this.#fetch(`${functionUrl}/clone`, {
        method: 'POST',
        headers: {
          authorization: `Bearer ${authToken}`,
          'content-type': 'application/json',
          accept: callbackUrl !== undefined ? 'application/json' : 'application/x-ndjson, application/json;q=0.9',
        },
        body,
        signal: AbortSignal.timeout(callbackUrl !== undefined ? ACCEPT_TIMEOUT_MS : cloneTimeoutMs),
      });
      if (response.status === 202 && callbackUrl !== undefined) {
        const accepted = acceptedSchema.safeParse(await response.json().catch(() => undefined));
        metrics.cloneRequests.inc({ result: 'accepted' });
        logger.debug(
          {
            job: accepted.success ? accepted.data.job : undefined,
            images: images.length,
            kind: workload?.kind,
            namespace: workload?.namespace,
            name: workload?.name,
          },
          'clone job accepted',
        );
        return;
      }
      if (response.status !== 200) {
        const text = (await response.text().catch(() => '')).slice(0, 300);
        throw new Error(`the clone function answered HTTP ${response.status}${text ? `: ${text}` : ''}`);
      }
      metrics.cloneRequests.inc({ result: 'accepted' });
      const accept = (entries: readonly unknown[]) => {
        const { results, malformed } = parseResults(entries);
        if (malformed > 0) metrics.callbackRejections.inc({ reason: 'malformed_result' }, malformed);
        const fresh = results.filter((result) => !settled.has(result.source));
        for (const source of intake.accept(fresh, context).settled) settled.add(source);
      };
      if ((response.headers.get('content-type') ?? '').includes('ndjson')) {
        await readLines(response, (line) => {
          const parsed = cloneEventSchema.safeParse(JSON.parse(line));
          if (!parsed.success) return;
          const event = parsed.data;
          if (event.type === 'result') accept([event.result]);
          else if (event.type === 'done') accept(event.results);
          else if (event.type === 'error') throw new Error(`the clone function reported: ${event.error ?? 'an error'}`);
        });
      } else {
        const parsed = resultsAnswerSchema.safeParse(await response.json());
        if (!parsed.success) throw new Error('the clone function answered without results');
        accept(parsed.data.results);
      }
      const missing = images.filter((image) => !settled.has(image));
      if (missing.length > 0) throw new Error('the clone function answered without a result for this image');
      logger.debug({ images: images.length, ms: this.#now() - started }, 'clone request answered');
    } catch (error) {
      metrics.cloneRequests.inc({ result: 'failed' });
      const message = describeError(error);
      const unsettled = images.filter((image) => !settled.has(image));
      logger.warn(
        { error: message, images: unsettled.length, kind: workload?.kind, namespace: workload?.namespace, name: workload?.name },
        'request to the clone function failed',
      );
      intake.failRequest(unsettled, message, context);
    }
  }
}

/**
 * Requests of at most `size` orders, no source twice in one (the function answers by source): a
 * second copy of a source (other credentials) goes in the next request.
 */
function batches(key: string, orders: readonly CopyOrder[], size: number): CopyOrder[][] {
  // The callback context names each image sent with credentials; the function refuses a context
  // over CONTEXT_LIMITS.bytes, so a workload with many long references is split before that.
  const contextRoom = CONTEXT_LIMITS.bytes - JSON.stringify({ workloads: [key], grants: {} }).length;
  const result: { orders: CopyOrder[]; contextBytes: number }[] = [];
  for (const order of orders) {
    const bytes = order.grant ? grantEntryLength(order) : 0;
    const open = result.find(
      (batch) =>
        batch.orders.length < size &&
        batch.contextBytes + bytes <= contextRoom &&
        !batch.orders.some((other) => other.source === order.source),
    );
    if (open) {
      open.orders.push(order);
      open.contextBytes += bytes;
    } else result.push({ orders: [order], contextBytes: bytes });
  }
  return result.map((batch) => batch.orders);
}

/** The length of `"source":{"id":…,"secret":…},` in the callback context. */
function grantEntryLength(order: CopyOrder): number {
  const { id, secret } = order.grant!;
  return JSON.stringify(order.source).length + JSON.stringify({ id, secret }).length + 2;
}

/** Calls `onLine` for each non-empty line of a streamed body; a throw from it ends the read. */
async function readLines(response: Response, onLine: (line: string) => void): Promise<void> {
  if (response.body === null) return;
  const decoder = new TextDecoder();
  let buffered = '';
  const reader = response.body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      buffered += done ? decoder.decode() : decoder.decode(value, { stream: true });
      let newline: number;
      while ((newline = buffered.indexOf('\n')) !== -1) {
        const line = buffered.slice(0, newline).trim();
        buffered = buffered.slice(newline + 1);
        if (line !== '') onLine(line);
      }
      if (buffered.length > MAX_LINE_CHARS) throw new Error('the clone function sent an overlong line');
      if (done) break;
    }
    if (buffered.trim() !== '') onLine(buffered.trim());
  } finally {
    reader.releaseLock();
    await response.body.cancel().catch(() => {});
  }
}
