import { Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { CloneClient } from '../../bridge/function/clone-client.ts';
import { GrantIds } from '../../bridge/function/grants.ts';
import { ImageLedger } from '../../bridge/function/image-ledger.ts';
import { ResultIntake } from '../../bridge/function/intake.ts';
import { expectedTarget } from '../../bridge/function/results.ts';
import { bridgeMetrics, metricValue, type BridgeMetrics } from '../../bridge/metrics.ts';
import { backupLocation, cloneRequestSchema } from '../../functions/contract/index.ts';
import { parseReference } from '../../functions/contract/index.ts';

const TOKEN = 'bearer-token-0123456789abcdef';
const backup = backupLocation('registry.example.com', 'backup');
const NGINX = 'docker.io/library/nginx:1.27';
const BUSYBOX = 'docker.io/library/busybox:1.36';
const digestOf = (source: string) => `sha256:${Buffer.from(source).toString('hex').padEnd(64, '0').slice(0, 64)}`;
const copied = (source: string) => ({
  source,
  target: expectedTarget(parseReference(source), digestOf(source), backup),
  digest: digestOf(source),
  status: 'copied',
  bytes: 1,
  ms: 1,
});

interface Call {
  url: string;
  headers: Record<string, string>;
  body: {
    images: (string | { image: string; credentials: unknown })[];
    callback?: { url: string; context: { workloads: string[]; grants?: Record<string, { id: string; secret: string }> } };
  };
}

/** No workload to tell a failure on: the intake's Events are the callback tests' concern. */
const noEvents = { events: { record: () => {} }, workloads: { get: () => undefined } };

let now: number;
let calls: Call[];
let respond: (call: Call) => Response | Promise<Response>;
let enqueued: string[];
let logs: string;
let metrics: BridgeMetrics;
let ledger: ImageLedger;

beforeEach(() => {
  now = 1_000_000;
  calls = [];
  enqueued = [];
  logs = '';
  metrics = bridgeMetrics();
  ledger = new ImageLedger({ now: () => now, random: () => 1, failureBaseMs: 1_000, failureMaxMs: 8_000 });
  respond = () => Response.json({ job: 'job-1' }, { status: 202 });
});

function client(options: { callbackUrl?: string; maxImagesPerRequest?: number; maxConcurrentRequests?: number } = {}) {
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _encoding, done) {
        logs += String(chunk);
        done();
      },
    }),
  );
  const intake = new ResultIntake({ backup, ledger, metrics, logger, enqueue: (key) => enqueued.push(key), ...noEvents });
  const fakeFetch = (async (input: string | URL | Request, init?: RequestInit) => {
    const call: Call = {
      url: String(input),
      headers: Object.fromEntries(new Headers(init?.headers).entries()),
      body: JSON.parse(String(init?.body)) as Call['body'],
    };
    calls.push(call);
    return respond(call);
  }) as typeof fetch;
  return new CloneClient({
    functionUrl: 'http://function.test',
    authToken: TOKEN,
    callbackUrl: 'callbackUrl' in options ? options.callbackUrl : 'http://bridge.test/callback',
    cloneTimeoutMs: 60_000,
    ledger,
    intake,
    metrics,
    logger,
    fetch: fakeFetch,
    now: () => now,
    ...(options.maxImagesPerRequest !== undefined && { maxImagesPerRequest: options.maxImagesPerRequest }),
    ...(options.maxConcurrentRequests !== undefined && { maxConcurrentRequests: options.maxConcurrentRequests }),
  });
}

function ndjson(lines: unknown[]): Response {
  const encoder = new TextEncoder();
  const body = new ReadableStream<Uint8Array>({
    start(controller) {
      // Split mid-line on purpose: the reader must reassemble lines across chunks.
      const text = lines.map((line) => JSON.stringify(line)).join('\n') + '\n';
      const middle = Math.floor(text.length / 2);
      controller.enqueue(encoder.encode(text.slice(0, middle)));
      controller.enqueue(encoder.encode(text.slice(middle)));
      controller.close();
    },
  });
  return new Response(body, { status: 200, headers: { 'content-type': 'application/x-ndjson' } });
}

describe('clone client: callback mode', () => {
  it('sends one authenticated request per workload with its images and the workload in the callback context', async () => {
    const cloner = client();
    const outcome = cloner.request('Deployment/default/web', [NGINX, BUSYBOX, NGINX]);
    await cloner.settle();
    expect(outcome).toEqual({ sent: [NGINX, BUSYBOX], recheckInMs: 60_000 });
    expect(calls).toHaveLength(1);
    expect(calls[0]!.url).toBe('http://function.test/clone');
    expect(calls[0]!.headers.authorization).toBe(`Bearer ${TOKEN}`);
    expect(calls[0]!.body).toEqual({
      images: [NGINX, BUSYBOX],
      callback: { url: 'http://bridge.test/callback', context: { workloads: ['Deployment/default/web'] } },
    });
    expect(ledger.status(NGINX)).toEqual({ state: 'in-flight', until: now + 60_000 });
    expect(await metricValue(metrics.cloneRequests, { result: 'accepted' })).toBe(1);
  });

  it('does not ask again for an image already in flight, for this or another workload', async () => {
    const cloner = client();
    cloner.request('Deployment/default/web', [NGINX]);
    now += 10_000;
    const again = cloner.request('Deployment/default/web', [NGINX]);
    const other = cloner.request('DaemonSet/default/agent', [NGINX, BUSYBOX]);
    await cloner.settle();
    expect(again).toEqual({ sent: [], recheckInMs: 50_000 });
    expect(other.sent).toEqual([BUSYBOX]);
    expect(calls.map((call) => call.body.images)).toEqual([[NGINX], [BUSYBOX]]);
  });

  it('asks again once a request is overdue (a lost callback costs a retry, not a workload)', async () => {
    const cloner = client();
    cloner.request('Deployment/default/web', [NGINX]);
    now += 60_001;
    expect(cloner.request('Deployment/default/web', [NGINX]).sent).toEqual([NGINX]);
    await cloner.settle();
    expect(calls).toHaveLength(2);
  });

  it('splits a workload with more images than the function takes at once', async () => {
    const cloner = client({ maxImagesPerRequest: 2 });
    const images = ['a:1', 'b:1', 'c:1', 'd:1', 'e:1'].map((image) => `docker.io/library/${image}`);
    cloner.request('Deployment/default/web', images);
    await cloner.settle();
    expect(calls.map((call) => call.body.images.length)).toEqual([2, 2, 1]);
  });

  it('splits a workload whose images with credentials would make a callback context the function refuses', async () => {
    const grants = new GrantIds();
    const secret = `pull-secret-${'s'.repeat(200)}`;
    // 50 images with references of ~230 characters, each with the workload's credentials: ~24 KB of grants.
    const orders = Array.from({ length: 50 }, (_, index) =>
      grants.order(`registry.example.org/team/${'x'.repeat(200)}-${index}:1.0`, {
        secret,
        credentials: { username: 'tenant', password: 'tenant-password' },
      }),
    );
    const cloner = client();
    cloner.request('Deployment/default/web', orders);
    await cloner.settle();
    expect(calls.length).toBeGreaterThan(1);
    const imagesOf = (call: Call) => call.body.images.map((image) => (typeof image === 'string' ? image : image.image));
    expect(calls.flatMap(imagesOf)).toEqual(orders.map((order) => order.source));
    for (const call of calls) {
      // What the function checks: the request as a whole, and the context within 16 KiB.
      expect(cloneRequestSchema().safeParse(call.body).success).toBe(true);
      expect(Object.keys(call.body.callback!.context.grants!)).toEqual(imagesOf(call));
    }
    // The positive control: the same 50 in one request would have been refused.
    const together = {
      images: orders.map((order) => ({ image: order.source, credentials: order.grant!.credentials })),
      callback: {
        url: 'http://bridge.test/callback',
        context: {
          workloads: ['Deployment/default/web'],
          grants: Object.fromEntries(orders.map((order) => [order.source, { id: order.grant!.id, secret }])),
        },
      },
    };
    expect(cloneRequestSchema().safeParse(together).error?.issues[0]?.message).toMatch(/larger than 16 KiB/);
  });

  it('keeps at most the configured number of requests open, sending the others as slots free up', async () => {
    const answers: (() => void)[] = [];
    let open = 0;
    let peak = 0;
    respond = () =>
      new Promise<Response>((resolve) => {
        open++;
        peak = Math.max(peak, open);
        answers.push(() => {
          open--;
          resolve(Response.json({ job: 'j' }, { status: 202 }));
        });
      });
    const cloner = client({ maxConcurrentRequests: 2 });
    for (let index = 0; index < 5; index++) cloner.request(`Deployment/default/w${index}`, [`docker.io/library/image${index}:1`]);
    const settled = cloner.settle();
    for (let round = 0; round < 5; round++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      answers.shift()?.();
    }
    await settled;
    expect(calls).toHaveLength(5);
    expect(peak).toBe(2);
  });

  it('records a failure with backoff when the function is unreachable, and enqueues the workloads', async () => {
    respond = () => {
      throw new TypeError('fetch failed');
    };
    const cloner = client();
    cloner.request('Deployment/default/web', [NGINX]);
    await cloner.settle();
    expect(ledger.status(NGINX)).toMatchObject({ state: 'failed', retryAt: now + 1_000, failures: 1 });
    expect(enqueued).toEqual(['Deployment/default/web']);
    expect(await metricValue(metrics.cloneRequests, { result: 'failed' })).toBe(1);

    // Not asked again before the retry time, then asked again, and the delay grows.
    expect(cloner.request('Deployment/default/web', [NGINX])).toEqual({ sent: [], recheckInMs: 1_000 });
    now += 1_000;
    expect(cloner.request('Deployment/default/web', [NGINX]).sent).toEqual([NGINX]);
    await cloner.settle();
    expect(ledger.status(NGINX)).toMatchObject({ state: 'failed', retryAt: now + 2_000, failures: 2 });
  });

  it('treats an error answer as a failed request, naming the status', async () => {
    respond = () => Response.json({ error: 'bad token' }, { status: 401 });
    const cloner = client();
    cloner.request('Deployment/default/web', [NGINX]);
    await cloner.settle();
    expect(ledger.status(NGINX)).toMatchObject({ state: 'failed', error: expect.stringContaining('HTTP 401') });
  });

  it('never writes the bearer token to the logs', async () => {
    respond = () => new Response('nope', { status: 500 });
    const cloner = client();
    cloner.request('Deployment/default/web', [NGINX]);
    await cloner.settle();
    expect(logs).toContain('Image Cloner: starting cloning process');
    expect(logs).not.toContain(TOKEN);
  });
});

describe('clone client: synchronous mode (no callback URL)', () => {
  it('reads streamed results as they come and feeds them to the intake', async () => {
    respond = () =>
      ndjson([
        { type: 'image', source: NGINX, status: 'started' },
        { type: 'blob', source: NGINX, digest: digestOf('x'), done: 1, total: 2 },
        { type: 'result', result: copied(NGINX) },
        { type: 'result', result: { source: BUSYBOX, status: 'failed', error: 'not found', ms: 1 } },
        { type: 'done', results: [copied(NGINX), { source: BUSYBOX, status: 'failed', error: 'not found', ms: 1 }] },
      ]);
    const cloner = client({ callbackUrl: undefined });
    expect(cloner.mode).toBe('synchronous');
    cloner.request('Deployment/default/web', [NGINX, BUSYBOX]);
    await cloner.settle();
    expect(calls[0]!.body.callback).toBeUndefined();
    expect(calls[0]!.headers.accept).toContain('application/x-ndjson');
    expect(ledger.backupOf(NGINX)).toBe(copied(NGINX).target);
    expect(ledger.status(BUSYBOX)).toMatchObject({ state: 'failed', error: 'not found', failures: 1 });
    // Each result counted once although "done" repeats them.
    expect(await metricValue(metrics.imageResults, { status: 'copied' })).toBe(1);
    expect(await metricValue(metrics.imageResults, { status: 'failed' })).toBe(1);
    expect(enqueued).toContain('Deployment/default/web');
  });

  it('measures each result from its request sent, once', async () => {
    respond = async () => {
      now += 2_500;
      return ndjson([
        { type: 'result', result: copied(NGINX) },
        { type: 'done', results: [copied(NGINX), { source: BUSYBOX, status: 'failed', error: 'not found', ms: 1 }] },
      ]);
    };
    const cloner = client({ callbackUrl: undefined });
    cloner.request('Deployment/default/web', [NGINX, BUSYBOX]);
    await cloner.settle();
    const { values } = await metrics.cloneLatency.get();
    const observed = (suffix: string, status: string) =>
      values.find(
        (value) => value.metricName === `image_clone_bridge_clone_latency_seconds_${suffix}` && value.labels.status === status,
      )?.value;
    expect([observed('count', 'copied'), observed('sum', 'copied')]).toEqual([1, 2.5]);
    expect([observed('count', 'failed'), observed('sum', 'failed')]).toEqual([1, 2.5]);
  });

  it('accepts a plain JSON answer', async () => {
    respond = () => Response.json({ results: [copied(NGINX)] });
    const cloner = client({ callbackUrl: undefined });
    cloner.request('Deployment/default/web', [NGINX]);
    await cloner.settle();
    expect(ledger.backupOf(NGINX)).toBe(copied(NGINX).target);
  });

  it('fails the images a cut-off answer left without a result, keeping the ones it gave', async () => {
    respond = () => ndjson([{ type: 'result', result: copied(NGINX) }]);
    const cloner = client({ callbackUrl: undefined });
    cloner.request('Deployment/default/web', [NGINX, BUSYBOX]);
    await cloner.settle();
    expect(ledger.backupOf(NGINX)).toBeDefined();
    expect(ledger.status(BUSYBOX)).toMatchObject({ state: 'failed' });
  });

  it('refuses a synchronous result whose target is not the expected one', async () => {
    respond = () =>
      Response.json({ results: [{ ...copied(NGINX), target: `registry.example.com/backup/x:1@${digestOf(NGINX)}` }] });
    const cloner = client({ callbackUrl: undefined });
    cloner.request('Deployment/default/web', [NGINX]);
    await cloner.settle();
    expect(ledger.backupOf(NGINX)).toBeUndefined();
    expect(await metricValue(metrics.callbackRejections, { reason: 'target_mismatch' })).toBe(1);
  });
});

describe('image ledger', () => {
  it('expires a verified backup so that a moved tag is looked at again', () => {
    const short = new ImageLedger({ now: () => now, backupTtlMs: 1_000 });
    short.succeed(NGINX, 'target', 'digest');
    expect(short.backupOf(NGINX)).toBe('target');
    now += 1_000;
    expect(short.backupOf(NGINX)).toBeUndefined();
    short.prune();
    expect(short.size).toBe(0);
  });

  it('keeps entries that workloads still wait for', () => {
    ledger.wait(NGINX, 'Deployment/default/web');
    ledger.prune();
    expect(ledger.size).toBe(1);
    expect(ledger.succeed(NGINX, 't', 'd')).toEqual(['Deployment/default/web']);
    expect(ledger.succeed(NGINX, 't', 'd')).toEqual([]);
  });

  it('releases each waiting workload once, however often it waited, and each of several', () => {
    ledger.wait(NGINX, 'Deployment/default/web');
    ledger.wait(NGINX, 'Deployment/default/web');
    expect(ledger.fail(NGINX, 'x').waiters).toEqual(['Deployment/default/web']);
    for (const key of ['Deployment/default/web', 'Pod/default/debug', 'Deployment/default/web', 'CronJob/default/nightly']) {
      ledger.wait(NGINX, key);
    }
    expect(ledger.succeed(NGINX, 't', 'd')).toEqual(['Deployment/default/web', 'Pod/default/debug', 'CronJob/default/nightly']);
    expect(ledger.succeed(NGINX, 't', 'd')).toEqual([]);
  });

  it('caps the failure backoff and starts over after a success', () => {
    const delays = [1, 2, 3, 4, 5].map(() => ledger.fail(NGINX, 'x').retryInMs);
    expect(delays).toEqual([1_000, 2_000, 4_000, 8_000, 8_000]);
    ledger.succeed(NGINX, 't', 'd');
    expect(ledger.fail(NGINX, 'x').retryInMs).toBe(1_000);
  });
});
