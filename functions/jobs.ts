// Callback jobs: a request with a callback is answered 202 at once; the copy runs as a job (in
// this process on Node, from a Queue on Workers) and its results are POSTed, signed, to the
// caller's URL until a 2xx answer or the deadline.

import { describeError } from '../lib/errors.ts';
import { CALLBACK_HEADERS, signCallback, type CallbackBody, type ImageRequest } from './contract/index.ts';
import type { CloneEngine } from './engine.ts';
import type { Logger } from './log.ts';
import type { FetchLike } from './registry/http.ts';
import { backoffDelay, parseRetryAfter, type RetryPolicy } from './registry/retry.ts';

export interface CloneJob {
  readonly id: string;
  /** With the credentials some carry: a job lives in memory only, or encrypted on a Queue. */
  readonly images: readonly ImageRequest[];
  readonly callback: { readonly url: string; readonly context?: unknown };
}

/** Runs callback jobs after the answer: in-process on Node, on a Queue on Workers. */
export interface JobRunner {
  submit(job: CloneJob): Promise<void>;
}

export interface JobSettings {
  readonly engine: CloneEngine;
  /** A job that failed other than by its callback's refusal (a bug): counted in /metrics. */
  readonly onFailure?: (job: CloneJob, error: unknown) => void;
  readonly fetch: FetchLike;
  readonly secret: string;
  readonly deadlineMs: number;
  readonly policy: RetryPolicy;
  readonly logger: Logger;
}

/**
 * Copies the job's images and delivers their results; resolves whether the callback was
 * delivered. Never rejects: a job runs after its request was answered, with nobody to tell.
 */
export async function runCloneJob(job: CloneJob, settings: JobSettings): Promise<boolean> {
  try {
    const results = await settings.engine.cloneAll(job.images);
    const body: CallbackBody = { job: job.id, context: job.callback.context ?? null, results };
    return await deliverCallback({
      fetch: settings.fetch,
      url: job.callback.url,
      secret: settings.secret,
      job: job.id,
      body: JSON.stringify(body),
      deadlineMs: settings.deadlineMs,
      policy: settings.policy,
      logger: settings.logger,
    });
  } catch (error) {
    settings.logger.error({ job: job.id, error: describeError(error) }, 'clone job failed');
    settings.onFailure?.(job, error);
    return false;
  }
}

export interface CallbackDelivery {
  readonly fetch: FetchLike;
  readonly url: string;
  readonly secret: string;
  readonly job: string;
  /** The JSON body, signed as sent. */
  readonly body: string;
  readonly deadlineMs: number;
  readonly policy: RetryPolicy;
  readonly logger: Logger;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly now?: () => number;
}

/**
 * POSTs the callback until a 2xx answer or the deadline; each attempt is signed afresh so its
 * timestamp stays current. Returns whether it was delivered.
 */
export async function deliverCallback(delivery: CallbackDelivery): Promise<boolean> {
  const now = delivery.now ?? Date.now;
  const sleep = delivery.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const giveUpAt = now() + delivery.deadlineMs;
  const target = safeUrl(delivery.url);
  for (let attempt = 1; ; attempt++) {
    const timestamp = Math.floor(now() / 1000);
    let retryAfterMs: number | undefined;
    try {
      const response = await delivery.fetch(delivery.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          [CALLBACK_HEADERS.job]: delivery.job,
          [CALLBACK_HEADERS.timestamp]: String(timestamp),
          [CALLBACK_HEADERS.signature]: signCallback(delivery.secret, timestamp, delivery.body),
        },
        body: delivery.body,
        // A redirect would carry the signed results elsewhere: a 3xx counts as a refusal.
        redirect: 'manual',
        signal: AbortSignal.timeout(30_000),
      });
      await response.body?.cancel().catch(() => {});
      if (response.ok) {
        delivery.logger.info({ job: delivery.job, target, attempt }, 'callback delivered');
        return true;
      }
      retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
      delivery.logger.warn({ job: delivery.job, target, attempt, status: response.status }, 'callback refused');
    } catch (error) {
      delivery.logger.warn({ job: delivery.job, target, attempt, error: describeError(error) }, 'callback failed');
    }
    // Backoff grows without the usual attempt cap: only the deadline ends the delivery.
    const delay = Math.max(backoffDelay(Math.min(attempt - 1, 10), delivery.policy), retryAfterMs ?? 0);
    if (now() + delay >= giveUpAt) {
      delivery.logger.error({ job: delivery.job, target, attempts: attempt }, 'callback abandoned at its deadline');
      return false;
    }
    await sleep(delay);
  }
}

/** Origin and path only: a callback URL may carry a token in its query. */
function safeUrl(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.origin}${parsed.pathname}`;
  } catch {
    return 'invalid URL';
  }
}
