// Exponential backoff with jitter, for every retry in the project: registry requests (full
// jitter, as AWS recommends for many clients hitting one server), and the bridge's work queue,
// image ledger and watch restarts (equal jitter: never much sooner than the exponential delay).

export interface BackoffBounds {
  /** The delay of the first retry, before jitter. */
  readonly baseMs: number;
  /** No delay grows beyond this. */
  readonly maxMs: number;
}

/** base · 2^retry, capped at max; `retry` counts from 0. */
export function exponentialDelay(retry: number, bounds: BackoffBounds): number {
  return Math.min(bounds.baseMs * 2 ** Math.min(Math.max(retry, 0), 52), bounds.maxMs);
}

/** Full jitter: uniform in [0, exponential). */
export function fullJitterDelay(retry: number, bounds: BackoffBounds, random: () => number = Math.random): number {
  return Math.floor(random() * exponentialDelay(retry, bounds));
}

/** Equal jitter: half the exponential delay, plus uniform in the other half. */
export function equalJitterDelay(retry: number, bounds: BackoffBounds, random: () => number = Math.random): number {
  const exponential = exponentialDelay(retry, bounds);
  return Math.round(exponential / 2 + (random() * exponential) / 2);
}
