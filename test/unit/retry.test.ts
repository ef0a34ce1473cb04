import { describe, expect, it } from 'vitest';
import { classifyError, DigestMismatchError, RegistryError } from '../../functions/registry/errors.ts';
import { backoffDelay, DEFAULT_RETRY_POLICY, parseRetryAfter, withRetries } from '../../functions/registry/retry.ts';

const policy = { maxAttempts: 5, baseDelayMs: 100, maxDelayMs: 1000, maxTotalMs: 10_000, maxRetryAfterMs: 5000 };

function clock() {
  let now = 0;
  const sleeps: number[] = [];
  return {
    now: () => now,
    sleep: async (ms: number) => {
      sleeps.push(ms);
      now += ms;
    },
    sleeps,
  };
}

describe('withRetries', () => {
  it('retries retryable failures with growing, jittered delays until success', async () => {
    const c = clock();
    let calls = 0;
    const result = await withRetries(
      async () => {
        calls++;
        if (calls < 4) throw new RegistryError('busy', 503);
        return 'ok';
      },
      { policy, classify: classifyError, sleep: c.sleep, now: c.now, random: () => 0.999 },
    );
    expect(result).toBe('ok');
    expect(calls).toBe(4);
    expect(c.sleeps).toEqual([99, 199, 399]);
  });

  it('waits at least as long as Retry-After says', async () => {
    const c = clock();
    let calls = 0;
    await withRetries(
      async () => {
        if (calls++ === 0) throw new RegistryError('slow down', 429, 'TOOMANYREQUESTS', 3000);
        return 1;
      },
      { policy, classify: classifyError, sleep: c.sleep, now: c.now, random: () => 0.5 },
    );
    expect(c.sleeps).toEqual([3000]);
  });

  it('gives up on a Retry-After longer than the policy allows, and on permanent errors at once', async () => {
    const c = clock();
    await expect(
      withRetries(async () => Promise.reject(new RegistryError('later', 429, undefined, 60_000)), {
        policy,
        classify: classifyError,
        sleep: c.sleep,
        now: c.now,
      }),
    ).rejects.toThrow('later');
    let calls = 0;
    await expect(
      withRetries(
        async () => {
          calls++;
          throw new DigestMismatchError('blob', 'sha256:a', 'sha256:b');
        },
        { policy, classify: classifyError, sleep: c.sleep, now: c.now },
      ),
    ).rejects.toThrow(/does not match/);
    expect(calls).toBe(1);
    expect(c.sleeps).toEqual([]);
  });

  it('stops after maxAttempts and within maxTotalMs', async () => {
    const c = clock();
    let calls = 0;
    await expect(
      withRetries(
        async () => {
          calls++;
          throw new TypeError('fetch failed');
        },
        { policy, classify: classifyError, sleep: c.sleep, now: c.now, random: () => 0.999 },
      ),
    ).rejects.toThrow('fetch failed');
    expect(calls).toBe(5);
    const tight = { ...policy, maxTotalMs: 250 };
    const c2 = clock();
    calls = 0;
    await expect(
      withRetries(
        async () => {
          calls++;
          throw new RegistryError('x', 500);
        },
        { policy: tight, classify: classifyError, sleep: c2.sleep, now: c2.now, random: () => 0.999 },
      ),
    ).rejects.toThrow();
    expect(c2.now()).toBeLessThanOrEqual(250);
  });

  it('does not retry 4xx answers other than 408, 425 and 429', () => {
    expect(classifyError(new RegistryError('x', 404)).retry).toBe(false);
    expect(classifyError(new RegistryError('x', 401)).retry).toBe(false);
    expect(classifyError(new RegistryError('x', 408)).retry).toBe(true);
    expect(classifyError(new RegistryError('x', 502)).retry).toBe(true);
    expect(classifyError(new TypeError('fetch failed')).retry).toBe(true);
  });
});

describe('parseRetryAfter and backoff', () => {
  it('reads seconds and HTTP dates', () => {
    expect(parseRetryAfter('7')).toBe(7000);
    expect(parseRetryAfter('Wed, 21 Oct 2026 07:28:10 GMT', Date.parse('Wed, 21 Oct 2026 07:28:00 GMT'))).toBe(10_000);
    expect(parseRetryAfter('soon')).toBeUndefined();
    expect(parseRetryAfter(null)).toBeUndefined();
  });

  it('caps the backoff', () => {
    expect(backoffDelay(30, DEFAULT_RETRY_POLICY, () => 0.999)).toBeLessThan(DEFAULT_RETRY_POLICY.maxDelayMs);
    expect(backoffDelay(0, DEFAULT_RETRY_POLICY, () => 0)).toBe(0);
  });
});
