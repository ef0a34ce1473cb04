// The clone function's HTTP API (docs/api.md), as one Hono app on Web-standard Request/Response:
// the Node server and the Worker both serve exactly this.

import { Buffer } from 'node:buffer';
import { createHash, timingSafeEqual } from 'node:crypto';
import { Hono, type Context } from 'hono';
import type { z } from 'zod';
import { readBounded } from '../lib/body.ts';
import { printable } from '../lib/text.ts';
import {
  cloneRequestSchema,
  imageOfRequest,
  parseReference,
  type CloneEvent,
  type CloneResult,
  type ImageRequest,
} from './contract/index.ts';
import type { CloneEngine } from './engine.ts';
import type { JobRunner } from './jobs.ts';
import type { Logger } from './log.ts';

export const BODY_LIMIT_BYTES = 256 * 1024;
/** Bytes of an oversized body read (and dropped) so the client can still read the answer. */
const DRAIN_LIMIT_BYTES = 16 * 1024 * 1024;

export interface AppOptions {
  readonly authToken: string;
  readonly engine: CloneEngine;
  readonly logger: Logger;
  readonly maxImagesPerRequest: number;
  /** Absent when no CALLBACK_SECRET is configured: callback requests are refused then. */
  readonly jobs?: JobRunner;
  /** Origins callbacks may go to (CALLBACK_ORIGINS); empty: callback requests are refused. */
  readonly callbackOrigins: ReadonlySet<string>;
  /** Extra routes of one runtime (Node's /metrics), behind the same authentication. */
  readonly extend?: (app: Hono) => void;
  readonly newJobId?: () => string;
}

export function createApp(options: AppOptions): Hono {
  const app = new Hono();
  const expectedToken = sha256(options.authToken);
  const requestSchema = cloneRequestSchema(options.maxImagesPerRequest);

  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  app.use('*', async (c, next) => {
    const header = c.req.header('authorization') ?? '';
    const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
    if (!match) return unauthorized(c, 'missing bearer token (send "Authorization: Bearer <AUTH_TOKEN>")');
    // Compare digests, so neither the token's content nor its length leaks through timing.
    if (!timingSafeEqual(sha256(match[1]!), expectedToken)) return unauthorized(c, 'invalid bearer token');
    await next();
  });

  options.extend?.(app);

  app.post('/clone', async (c) => {
    // An oversized body is still read to its end (up to a bound): closing the connection
    // mid-upload would hide the 400 from the client.
    const { bytes, truncated } = await readBounded(c.req.raw.body, { limit: BODY_LIMIT_BYTES, drainUpTo: DRAIN_LIMIT_BYTES });
    if (truncated) return c.json({ error: `request body larger than ${BODY_LIMIT_BYTES / 1024} KiB` }, 400);
    const text = new TextDecoder().decode(bytes);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return c.json({ error: 'request body is not valid JSON' }, 400);
    }
    const parsed = requestSchema.safeParse(body);
    if (!parsed.success) return c.json({ error: describeIssues(parsed.error, body) }, 400);
    const { images, callback } = parsed.data;
    const invalid = invalidReferences(images);
    if (invalid.length > 0) return c.json({ error: `invalid image references: ${invalid.join('; ')}` }, 400);

    if (callback) {
      if (!options.jobs) {
        return c.json({ error: 'callbacks are not enabled on this function (CALLBACK_SECRET is not set)' }, 400);
      }
      const refusal = refuseCallbackUrl(callback.url, options.callbackOrigins);
      if (refusal !== undefined) return c.json({ error: refusal }, 400);
      const id = options.newJobId?.() ?? crypto.randomUUID();
      await options.jobs.submit({ id, images, callback });
      options.logger.info({ job: id, images: images.length }, 'clone job accepted');
      return c.json({ job: id }, 202);
    }

    // A client that goes away cancels the copies nobody else waits for.
    const gone = c.req.raw.signal;
    if ((c.req.header('accept') ?? '').includes('application/x-ndjson')) {
      return streamProgress(options.engine, images, gone);
    }
    const results = await options.engine.cloneAll(images, undefined, gone);
    return c.json({ results });
  });

  app.notFound((c) => c.json({ error: `no route for ${c.req.method} ${new URL(c.req.url).pathname}` }, 404));
  app.onError((error, c) => {
    options.logger.error({ error: error.message }, 'request failed');
    return c.json({ error: 'internal error' }, 500);
  });
  return app;
}

function describeIssues(error: z.ZodError, body: unknown): string {
  return error.issues
    .slice(0, 5)
    .map((issue) => {
      if (issue.code === 'unrecognized_keys') return `unknown field(s) ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
      if (issue.code === 'invalid_type' && valueAt(body, issue.path) === undefined)
        return `missing field "${issue.path.join('.')}"`;
      return issue.message;
    })
    .join('; ');
}

function valueAt(value: unknown, path: readonly PropertyKey[]): unknown {
  let current = value;
  for (const key of path) {
    if (typeof current !== 'object' || current === null) return undefined;
    current = (current as Record<PropertyKey, unknown>)[key];
  }
  return current;
}

function invalidReferences(images: readonly ImageRequest[]): string[] {
  const problems: string[] = [];
  images.forEach((image, index) => {
    try {
      parseReference(imageOfRequest(image));
    } catch (error) {
      problems.push(`images[${index}]: ${(error as Error).message}`);
    }
  });
  return problems.slice(0, 10);
}

/**
 * Where callbacks may go: an origin the operator listed. Otherwise anyone with the token could
 * have the function POST to an internal service of its choosing.
 */
function refuseCallbackUrl(url: string, allowed: ReadonlySet<string>): string | undefined {
  if (allowed.size === 0) return 'callbacks are not enabled on this function (CALLBACK_ORIGINS is not set)';
  const origin = new URL(url).origin;
  return allowed.has(origin)
    ? undefined
    : `"callback.url": ${printable(origin, 100)} is not an allowed origin (CALLBACK_ORIGINS)`;
}

/** NDJSON: progress events as they happen, then every result. */
function streamProgress(engine: CloneEngine, images: readonly ImageRequest[], requestSignal: AbortSignal): Response {
  const encoder = new TextEncoder();
  let send: (line: object) => void = () => {};
  // The stream is cancelled when the client goes away, which some runtimes tell sooner than the request's signal.
  const cancelled = new AbortController();
  const gone = AbortSignal.any([requestSignal, cancelled.signal]);
  const body = new ReadableStream<Uint8Array>({
    cancel() {
      cancelled.abort();
    },
    start(controller) {
      send = (line) => {
        try {
          controller.enqueue(encoder.encode(`${JSON.stringify(line)}\n`));
        } catch {
          // The client went away; the copy goes on and its result is still logged.
        }
      };
      engine
        .cloneAll(images, (event: CloneEvent) => send(event), gone)
        .then((results: CloneResult[]) => send({ type: 'done', results }))
        .catch((error: Error) => send({ type: 'error', error: error.message }))
        .finally(() => {
          try {
            controller.close();
          } catch {
            // Already closed by a cancelled client.
          }
        });
    },
  });
  return new Response(body, {
    status: 200,
    headers: { 'content-type': 'application/x-ndjson', 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' },
  });
}

function unauthorized(c: Context, message: string): Response {
  c.header('www-authenticate', 'Bearer realm="image-clone-controller"');
  return c.json({ error: message }, 401);
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}
