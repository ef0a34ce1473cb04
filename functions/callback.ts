// Signed callbacks: HMAC-SHA256 over "<timestamp>.<body>" with CALLBACK_SECRET. The function signs
// and delivers; the bridge verifies with the same functions.

import { Buffer } from 'node:buffer';
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { FetchLike } from './registry/auth.ts';
import { backoffDelay, parseRetryAfter, type RetryPolicy } from './registry/retry.ts';
import type { Logger } from './copy/image.ts';

export const CALLBACK_HEADERS = {
  job: 'x-clone-job',
  timestamp: 'x-clone-timestamp',
  signature: 'x-clone-signature',
} as const;

/** How far a callback's timestamp may be from the receiver's clock. */
export const CALLBACK_TOLERANCE_SECONDS = 300;

export function signCallback(secret: string, timestamp: number, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}

export type SignatureVerdict = { ok: true } | { ok: false; reason: 'missing' | 'stale' | 'mismatch' };

/** Checks signature and timestamp (timing-safe); replays are the receiver's to track. */
export function verifyCallback(
  secret: string,
  headers: { timestamp: string | null | undefined; signature: string | null | undefined },
  body: string,
  nowSeconds = Math.floor(Date.now() / 1000),
): SignatureVerdict {
  if (!headers.timestamp || !headers.signature) return { ok: false, reason: 'missing' };
  if (!/^\d{1,12}$/.test(headers.timestamp)) return { ok: false, reason: 'stale' };
  const timestamp = Number(headers.timestamp);
  if (Math.abs(nowSeconds - timestamp) > CALLBACK_TOLERANCE_SECONDS) return { ok: false, reason: 'stale' };
  const expected = Buffer.from(signCallback(secret, timestamp, body));
  const given = Buffer.from(headers.signature);
  if (expected.length !== given.length || !timingSafeEqual(expected, given)) return { ok: false, reason: 'mismatch' };
  return { ok: true };
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
      delivery.logger.warn({ job: delivery.job, target, attempt, error: (error as Error).message }, 'callback failed');
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
