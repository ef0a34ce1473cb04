// A stand-in for the clone function that answers per docs/api.md and copies nothing: its copy
// speed is not what the benchmark measures. It reads a request with the contract's own schema
// (an entry is a reference or {image, credentials}), notes when each image is first asked for
// (the end of the "change → function request" interval) and with which credentials, and answers
// the way the real function does: callback mode (202 {job}, then a POST signed with
// CALLBACK_SECRET through the function's own deliverCallback) or synchronous mode (200 {results}).

import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { performance } from 'node:perf_hooks';
import { deliverCallback } from '../functions/jobs.ts';
import { backupReference, cloneRequestSchema, imageOfRequest, type BackupLocation } from '../functions/contract/index.ts';
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
  /**
   * The credentials each (normalised) image was asked for with: the usernames, '' for none. The
   * benchmark checks them against the pull secrets its workloads name.
   */
  readonly askedWith: Map<string, Set<string>>;
  readonly stats: {
    requests: number;
    images: number;
    withCredentials: number;
    repeated: number;
    callbacks: number;
    callbackFailures: number;
  };
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
  const askedWith = new Map<string, Set<string>>();
  const stats = { requests: 0, images: 0, withCredentials: 0, repeated: 0, callbacks: 0, callbackFailures: 0 };
  const requestSchema = cloneRequestSchema();
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
    let json: unknown;
    try {
      json = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      return answer(400, { error: 'body is not JSON' });
    }
    const parsed = requestSchema.safeParse(json);
    if (!parsed.success) return answer(400, { error: parsed.error.issues[0]?.message ?? 'invalid request' });
    const body = parsed.data;
    stats.requests++;
    for (const entry of body.images) {
      const image = imageOfRequest(entry);
      const username = typeof entry === 'string' ? '' : (entry.credentials?.username ?? '');
      stats.images++;
      if (username !== '') stats.withCredentials++;
      if (firstAsked.has(image)) stats.repeated++;
      else firstAsked.set(image, arrived);
      const users = askedWith.get(image);
      if (users === undefined) askedWith.set(image, new Set([username]));
      else users.add(username);
    }
    const results = body.images.map((entry) => resultOf(imageOfRequest(entry)));
    if (body.callback === undefined) return answer(200, { results });

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
    askedWith,
    stats,
    stop: async () => {
      await Promise.allSettled([...deliveries]);
      await closeServer(server);
    },
  };
}
