// The endpoint where the clone function posts results. A callback is authenticated (HMAC over
// timestamp and body), fresh (timestamp within 5 minutes), used once (signature and job
// remembered), and its results are checked against the bridge's own mapping by the intake before
// anything uses them.

import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { Logger } from 'pino';
import type { ZodError } from 'zod';
import {
  bridgeContextSchema,
  CALLBACK_HEADERS,
  CALLBACK_TOLERANCE_SECONDS,
  callbackBodySchema,
  verifyCallback,
} from '../../functions/contract/index.ts';
import type { BridgeMetrics } from '../metrics.ts';
import type { ResultIntake } from './intake.ts';
import { ReplayCache } from './replay-cache.ts';
import { parseResults } from './results.ts';

export const MAX_CALLBACK_BYTES = 1024 * 1024;

export interface CallbackEndpointOptions {
  readonly callbackSecret: string;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
  /** The intake while this replica reconciles; undefined (answer 503, the function retries) otherwise. */
  readonly intake: () => ResultIntake | undefined;
  readonly now?: () => number;
}

/** Metric labels for the verdicts of the function's verifyCallback. */
const SIGNATURE_REJECTIONS = { missing: 'missing_signature', stale: 'stale_timestamp', mismatch: 'bad_signature' } as const;

/** The context the bridge put in its request, when it is one; null and absent mean none. */
const contextSchema = bridgeContextSchema.nullish();

/** `POST /callback`, as an app to mount. */
export function callbackEndpoint(options: CallbackEndpointOptions): Hono {
  const { callbackSecret, metrics, logger } = options;
  const now = options.now ?? Date.now;
  // A signature outlives its timestamp's acceptance window (±5 min) in this cache, so a replay
  // is refused either as seen or as stale.
  const seenSignatures = new ReplayCache({ ttlMs: 2 * CALLBACK_TOLERANCE_SECONDS * 1000 + 60_000, now });
  // A job the function re-sends (it got no 2xx in time) is acknowledged without being applied twice.
  const seenJobs = new ReplayCache({ ttlMs: 24 * 3600_000, maxEntries: 100_000, now });

  const reject = (c: Context, status: 400 | 401 | 409 | 413 | 503, reason: string, error: string) => {
    metrics.callbackRejections.inc({ reason });
    logger.warn({ reason, job: c.req.header(CALLBACK_HEADERS.job)?.slice(0, 200) }, 'callback refused');
    return c.json({ error }, status);
  };

  const refuseBody = (c: Context, error: ZodError) =>
    reject(c, 400, 'malformed', `invalid callback body: ${error.issues[0]?.message ?? 'unexpected shape'}`);

  const limit = bodyLimit({ maxSize: MAX_CALLBACK_BYTES, onError: (c) => reject(c, 413, 'too_large', 'body too large') });

  return new Hono().post('/callback', limit, async (c) => {
    const intake = options.intake();
    if (intake === undefined) return reject(c, 503, 'not_leader', 'this replica is not reconciling; retry');

    const body = await c.req.text();
    const signature = c.req.header(CALLBACK_HEADERS.signature);
    const verdict = verifyCallback(
      callbackSecret,
      { timestamp: c.req.header(CALLBACK_HEADERS.timestamp), signature },
      body,
      Math.floor(now() / 1000),
    );
    if (!verdict.ok) return reject(c, 401, SIGNATURE_REJECTIONS[verdict.reason], 'invalid signature or timestamp');
    if (!seenSignatures.remember(signature!.toLowerCase())) return reject(c, 409, 'replay', 'signature already used');

    let json: unknown;
    try {
      json = JSON.parse(body);
    } catch {
      return reject(c, 400, 'malformed', 'body is not JSON');
    }
    const parsed = callbackBodySchema.safeParse(json);
    if (!parsed.success) return refuseBody(c, parsed.error);
    const context = contextSchema.safeParse(parsed.data.context);
    if (!context.success) return refuseBody(c, context.error);
    const payload = parsed.data;
    const jobHeader = c.req.header(CALLBACK_HEADERS.job);
    if (jobHeader !== undefined && jobHeader !== payload.job) {
      return reject(c, 400, 'job_mismatch', `${CALLBACK_HEADERS.job} does not match the body`);
    }
    if (!seenJobs.remember(payload.job)) {
      logger.debug({ job: payload.job }, 'callback for a job already received');
      return c.json({ job: payload.job, duplicate: true });
    }

    const { results, malformed } = parseResults(payload.results);
    if (malformed > 0) metrics.callbackRejections.inc({ reason: 'malformed_result' }, malformed);
    const summary = intake.accept(results, context.data ?? {});
    logger.debug(
      { job: payload.job, accepted: summary.accepted, failed: summary.failed, rejected: summary.rejected.length },
      'callback received',
    );
    return c.json({
      job: payload.job,
      accepted: summary.accepted,
      failed: summary.failed,
      rejected: summary.rejected.map(({ source, reason }) => ({ source, reason })),
      ...(malformed > 0 && { malformed }),
    });
  });
}
