// Signed callbacks: HMAC-SHA256 over "<timestamp>.<body>" with CALLBACK_SECRET. The function signs
// (functions/jobs.ts delivers); a receiver such as the bridge verifies with the same functions.

import { Buffer } from 'node:buffer';
import { createHmac, timingSafeEqual } from 'node:crypto';

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
