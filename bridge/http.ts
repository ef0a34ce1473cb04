// The bridge's HTTP surface: probes, metrics, and the endpoint where the clone function posts
// results. The callback is authenticated (HMAC over timestamp and body), fresh (timestamp within
// 5 minutes), used once (signature and job remembered), and its results are checked against the
// bridge's own mapping by the intake before anything uses them.

import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import type { Logger } from 'pino';
import { z } from 'zod';
import { CALLBACK_HEADERS, CALLBACK_TOLERANCE_SECONDS, verifyCallback } from '../functions/contract/index.ts';
import type { ResultIntake } from './function/intake.ts';
import { ReplayCache } from './function/replay-cache.ts';
import { cloneResultSchema } from './function/results.ts';
import type { BridgeMetrics } from './metrics.ts';

export const MAX_CALLBACK_BYTES = 1024 * 1024;

export interface Readiness {
  readonly ready: boolean;
  readonly reason?: string;
}

export interface HttpAppOptions {
  readonly callbackSecret: string;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
  readonly readiness: () => Readiness;
  /** The intake while this replica reconciles; undefined (answer 503, the function retries) otherwise. */
  readonly intake: () => ResultIntake | undefined;
  readonly now?: () => number;
}

/** Metric labels for the verdicts of the function's verifyCallback. */
const SIGNATURE_REJECTIONS = { missing: 'missing_signature', stale: 'stale_timestamp', mismatch: 'bad_signature' } as const;

const callbackSchema = z.looseObject({
  job: z.string().min(1).max(200),
  context: z.looseObject({ workloads: z.array(z.string().max(600)).max(1000).optional() }).nullish(),
  results: z.array(z.unknown()).max(10_000),
});

export function createHttpApp(options: HttpAppOptions): Hono {
  const { callbackSecret, metrics, logger, readiness } = options;
  const now = options.now ?? Date.now;
  // A signature outlives its timestamp's acceptance window (±5 min) in this cache, so a replay
  // is refused either as seen or as stale.
  const seenSignatures = new ReplayCache({ ttlMs: 2 * CALLBACK_TOLERANCE_SECONDS * 1000 + 60_000, now });
  // A job the function re-sends (it got no 2xx in time) is acknowledged without being applied twice.
  const seenJobs = new ReplayCache({ ttlMs: 24 * 3600_000, maxEntries: 100_000, now });

  const app = new Hono();

  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  app.get('/readyz', (c) => {
    const state = readiness();
    return state.ready ? c.json({ status: 'ready' }) : c.json({ status: 'not ready', reason: state.reason }, 503);
  });

  app.get('/metrics', (c) =>
    c.text(metrics.registry.render(), 200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8' }),
  );

  const reject = (c: Context, status: 400 | 401 | 409 | 413 | 503, reason: string, error: string) => {
    metrics.callbackRejections.inc({ reason });
    logger.warn({ reason, job: c.req.header(CALLBACK_HEADERS.job)?.slice(0, 200) }, 'callback refused');
    return c.json({ error }, status);
  };

  const limit = bodyLimit({ maxSize: MAX_CALLBACK_BYTES, onError: (c) => reject(c, 413, 'too_large', 'body too large') });

  app.post('/callback', limit, async (c) => {
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

    let payload: z.infer<typeof callbackSchema>;
    try {
      const parsed = callbackSchema.safeParse(JSON.parse(body));
      if (!parsed.success)
        return reject(c, 400, 'malformed', `invalid callback body: ${parsed.error.issues[0]?.message ?? 'unexpected shape'}`);
      payload = parsed.data;
    } catch {
      return reject(c, 400, 'malformed', 'body is not JSON');
    }
    const jobHeader = c.req.header(CALLBACK_HEADERS.job);
    if (jobHeader !== undefined && jobHeader !== payload.job) {
      return reject(c, 400, 'job_mismatch', `${CALLBACK_HEADERS.job} does not match the body`);
    }
    if (!seenJobs.remember(payload.job)) {
      logger.debug({ job: payload.job }, 'callback for a job already received');
      return c.json({ job: payload.job, duplicate: true });
    }

    const results = [];
    let malformed = 0;
    for (const raw of payload.results) {
      const parsed = cloneResultSchema.safeParse(raw);
      if (parsed.success) results.push(parsed.data);
      else malformed++;
    }
    if (malformed > 0) metrics.callbackRejections.inc({ reason: 'malformed_result' }, malformed);
    const summary = intake.accept(results, payload.context?.workloads ?? []);
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

  return app;
}
