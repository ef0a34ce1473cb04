// Retries with exponential backoff and full jitter, honouring Retry-After, within a bounded total.

import { fullJitterDelay } from '../../lib/backoff.ts';

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
  /** No retry starts once this much time has passed since the first attempt. */
  readonly maxTotalMs: number;
  /** A longer Retry-After than this is not waited for: the operation fails instead. */
  readonly maxRetryAfterMs: number;
}

export const DEFAULT_RETRY_POLICY: RetryPolicy = {
  maxAttempts: 6,
  baseDelayMs: 300,
  maxDelayMs: 10_000,
  maxTotalMs: 180_000,
  maxRetryAfterMs: 60_000,
};

const RETRYABLE_STATUS = new Set([408, 425, 429, 500, 502, 503, 504]);

export function isRetryableStatus(status: number): boolean {
  return RETRYABLE_STATUS.has(status);
}

/** Retry-After as seconds or an HTTP date; undefined when absent or unreadable. */
export function parseRetryAfter(header: string | null | undefined, now = Date.now()): number | undefined {
  if (!header) return undefined;
  const trimmed = header.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const date = Date.parse(trimmed);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

/** Full jitter: uniform in [0, min(max, base · 2^retry)). */
export function backoffDelay(retry: number, policy: RetryPolicy, random: () => number = Math.random): number {
  return fullJitterDelay(retry, { baseMs: policy.baseDelayMs, maxMs: policy.maxDelayMs }, random);
}

/** What an error says about trying again. */
export interface RetryVerdict {
  readonly retry: boolean;
  /** The server's Retry-After, when it sent one. */
  readonly retryAfterMs?: number;
}

export interface RetryHooks {
  readonly policy: RetryPolicy;
  readonly classify: (error: unknown) => RetryVerdict;
  readonly onRetry?: (info: { attempt: number; delayMs: number; error: unknown }) => void;
  readonly sleep?: (ms: number) => Promise<void>;
  readonly now?: () => number;
  readonly random?: () => number;
}

export async function withRetries<T>(operation: (attempt: number) => Promise<T>, hooks: RetryHooks): Promise<T> {
  const now = hooks.now ?? Date.now;
  const sleep = hooks.sleep ?? ((ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  const started = now();
  for (let attempt = 1; ; attempt++) {
    try {
      return await operation(attempt);
    } catch (error) {
      const verdict = hooks.classify(error);
      if (!verdict.retry || attempt >= hooks.policy.maxAttempts) throw error;
      if (verdict.retryAfterMs !== undefined && verdict.retryAfterMs > hooks.policy.maxRetryAfterMs) throw error;
      const backoff = backoffDelay(attempt - 1, hooks.policy, hooks.random);
      const delayMs = Math.max(backoff, verdict.retryAfterMs ?? 0);
      if (now() - started + delayMs > hooks.policy.maxTotalMs) throw error;
      hooks.onRetry?.({ attempt, delayMs, error });
      await sleep(delayMs);
    }
  }
}
