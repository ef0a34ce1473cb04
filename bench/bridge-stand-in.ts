// A stand-in for the clone function that answers per docs/api.md and copies nothing: its copy
// speed is not what the benchmark measures. It notes when each image is first asked for (the end
// of the "change → function request" interval) and answers the way the real function does:
// callback mode (202 {job}, then a POST signed with CALLBACK_SECRET through the function's own
// deliverCallback) or synchronous mode (200 {results}).

import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { deliverCallback } from '../functions/jobs.ts';
import { backupReference, type BackupLocation } from '../functions/contract/index.ts';
import { formatReference, parseReference } from '../functions/contract/index.ts';
import { closeServer, listenOnLoopback } from '../testbed/ports.ts';

export interface StandInOptions {
  readonly authToken: string;
  readonly callbackSecret: string;
  readonly backup: BackupLocation;
}

export interface StandIn {
  readonly url: string;
  /** performance.now() when each (normalised) image first arrived in a request. */
  readonly firstAsked: Map<string, number>;
  readonly stats: { requests: number; images: number; repeated: number; callbacks: number; callbackFailures: number };
  stop(): Promise<void>;
}

const quiet = { info() {}, warn() {}, error() {}, debug() {} };

export const digestOf = (source: string) => `sha256:${createHash('sha256').update(source).digest('hex')}`;

/** The backup the bridge must point an image at: the stand-in reports this target and digest. */
export function backupOf(image: string, backup: BackupLocation): string {
  const source = formatReference(parseReference(image));
  return `${formatReference(backupReference(parseReference(image), backup))}@${digestOf(source)}`;
}

export async function startStandIn(options: StandInOptions): Promise<StandIn> {
  const firstAsked = new Map<string, number>();
  const stats = { requests: 0, images: 0, repeated: 0, callbacks: 0, callbackFailures: 0 };
  const deliveries = new Set<Promise<unknown>>();

  const resultOf = (image: string) => {
    const source = formatReference(parseReference(image));
    return { source, target: backupOf(image, options.backup), digest: digestOf(source), status: 'copied', bytes: 0, ms: 0 };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const answer = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'POST' || req.url !== '/clone') return answer(404, { error: 'not found' });
    if (req.headers.authorization !== `Bearer ${options.authToken}`) return answer(401, { error: 'unauthorized' });
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const arrived = performance.now();
    let body: { images?: unknown; callback?: { url?: unknown; context?: unknown } };
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof body;
    } catch {
      return answer(400, { error: 'body is not JSON' });
    }
    if (!Array.isArray(body.images) || body.images.length === 0 || !body.images.every((image) => typeof image === 'string')) {
      return answer(400, { error: 'images: expected 1 to 50 image references' });
    }
    const images = body.images as string[];
    stats.requests++;
    for (const image of images) {
      stats.images++;
      if (firstAsked.has(image)) stats.repeated++;
      else firstAsked.set(image, arrived);
    }
    const results = images.map(resultOf);
    if (body.callback === undefined) return answer(200, { results });
    if (typeof body.callback.url !== 'string') return answer(400, { error: 'callback.url: expected a URL' });

    const job = randomBytes(8).toString('hex');
    answer(202, { job });
    const delivery = deliverCallback({
      fetch,
      url: body.callback.url,
      secret: options.callbackSecret,
      job,
      body: JSON.stringify({ job, context: body.callback.context ?? null, results }),
      deadlineMs: 120_000,
      policy: { maxAttempts: 100, baseDelayMs: 100, maxDelayMs: 2_000, maxTotalMs: 120_000, maxRetryAfterMs: 2_000 },
      logger: quiet,
    }).then((delivered) => (delivered ? stats.callbacks++ : stats.callbackFailures++));
    deliveries.add(delivery);
    void delivery.finally(() => deliveries.delete(delivery));
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: String(error) }));
    });
  });
  server.keepAliveTimeout = 60_000;
  return {
    url: `http://127.0.0.1:${await listenOnLoopback(server)}`,
    firstAsked,
    stats,
    stop: async () => {
      await Promise.allSettled([...deliveries]);
      await closeServer(server);
    },
  };
}
