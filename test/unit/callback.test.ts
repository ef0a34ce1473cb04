import { describe, expect, it } from 'vitest';
import { signCallback, verifyCallback } from '../../functions/contract/index.ts';
import { deliverCallback } from '../../functions/jobs.ts';

const SECRET = 'callback-secret-for-tests';
const silent = { info() {}, warn() {}, error() {}, debug() {} };
const policy = { maxAttempts: 3, baseDelayMs: 100, maxDelayMs: 1000, maxTotalMs: 10_000, maxRetryAfterMs: 5000 };

describe('callback signatures', () => {
  const body = '{"job":"1","results":[]}';
  const now = 1_800_000_000;

  it('verifies what was signed', () => {
    const signature = signCallback(SECRET, now, body);
    expect(signature).toMatch(/^sha256=[0-9a-f]{64}$/);
    expect(verifyCallback(SECRET, { timestamp: String(now), signature }, body, now + 10)).toEqual({ ok: true });
  });

  it('refuses another body, another secret, an old timestamp and missing headers', () => {
    const signature = signCallback(SECRET, now, body);
    expect(verifyCallback(SECRET, { timestamp: String(now), signature }, `${body} `, now)).toEqual({
      ok: false,
      reason: 'mismatch',
    });
    expect(verifyCallback('another-secret-value', { timestamp: String(now), signature }, body, now)).toEqual({
      ok: false,
      reason: 'mismatch',
    });
    expect(verifyCallback(SECRET, { timestamp: String(now), signature }, body, now + 301)).toEqual({
      ok: false,
      reason: 'stale',
    });
    expect(verifyCallback(SECRET, { timestamp: String(now + 1), signature }, body, now)).toEqual({
      ok: false,
      reason: 'mismatch',
    });
    expect(verifyCallback(SECRET, { timestamp: '12abc', signature }, body, now)).toEqual({ ok: false, reason: 'stale' });
    expect(verifyCallback(SECRET, { timestamp: undefined, signature }, body, now)).toEqual({ ok: false, reason: 'missing' });
  });
});

describe('deliverCallback', () => {
  function fakeClock() {
    let now = 1_800_000_000_000;
    return { now: () => now, sleep: async (ms: number) => void (now += ms) };
  }

  it('retries until a 2xx answer, signing each attempt', async () => {
    const seen: Array<{ timestamp: string; signature: string; body: string }> = [];
    const statuses = [503, 500, 204];
    const clock = fakeClock();
    const delivered = await deliverCallback({
      fetch: async (_url, init) => {
        const headers = new Headers(init?.headers);
        seen.push({
          timestamp: headers.get('x-clone-timestamp')!,
          signature: headers.get('x-clone-signature')!,
          body: String(init?.body),
        });
        return new Response(null, { status: statuses.shift()! });
      },
      url: 'http://bridge/callback?token=not-logged',
      secret: SECRET,
      job: 'j1',
      body: '{"job":"j1"}',
      deadlineMs: 60_000,
      policy,
      logger: silent,
      ...clock,
    });
    expect(delivered).toBe(true);
    expect(seen).toHaveLength(3);
    for (const attempt of seen) {
      expect(verifyCallback(SECRET, attempt, attempt.body, Number(attempt.timestamp))).toEqual({ ok: true });
    }
  });

  it('gives up at the deadline', async () => {
    let attempts = 0;
    const clock = fakeClock();
    const delivered = await deliverCallback({
      fetch: async () => {
        attempts++;
        throw new TypeError('fetch failed');
      },
      url: 'http://bridge/callback',
      secret: SECRET,
      job: 'j2',
      body: '{}',
      deadlineMs: 5_000,
      policy,
      logger: silent,
      ...clock,
    });
    expect(delivered).toBe(false);
    expect(attempts).toBeGreaterThan(2);
  });
});
