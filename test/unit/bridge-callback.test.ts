import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { MAX_CALLBACK_BYTES } from '../../bridge/function/callback.ts';
import { ImageLedger } from '../../bridge/function/image-ledger.ts';
import { ResultIntake } from '../../bridge/function/intake.ts';
import { ReplayCache } from '../../bridge/function/replay-cache.ts';
import { createHttpApp, type Readiness } from '../../bridge/http.ts';
import type { EventType, InvolvedObject } from '../../bridge/kube/events.ts';
import { bridgeMetrics, metricValue, type BridgeMetrics } from '../../bridge/metrics.ts';
import { signCallback } from '../../functions/contract/index.ts';
import { backupLocation } from '../../functions/contract/index.ts';

const SECRET = 'callback-secret-0123456789abcdef';
const DIGEST = `sha256:${'c'.repeat(64)}`;
const backup = backupLocation('registry.example.com', 'backup');
const NGINX = 'docker.io/library/nginx:1.27';
const NGINX_TARGET = `registry.example.com/backup/docker.io/library/nginx:1.27@${DIGEST}`;
const KEY = 'Deployment/default/web';

let clock: number;
let metrics: BridgeMetrics;
let ledger: ImageLedger;
let enqueued: string[];
let events: { object: InvolvedObject; type: EventType; reason: string; message: string }[];
/** Workloads the informers' cache holds; the intake tells failures only on these. */
let cached: Set<string>;
let leading: boolean;
let readiness: Readiness;
let app: ReturnType<typeof createHttpApp>;

beforeEach(() => {
  clock = Date.UTC(2026, 10, 27, 12, 0, 0);
  metrics = bridgeMetrics();
  ledger = new ImageLedger({ now: () => clock, random: () => 0.5 });
  enqueued = [];
  events = [];
  cached = new Set([KEY, 'Deployment/default/other']);
  leading = true;
  readiness = { ready: true };
  const logger = pino({ level: 'silent' });
  const intake = new ResultIntake({
    backup,
    ledger,
    metrics,
    logger,
    enqueue: (key) => enqueued.push(key),
    events: { record: (object, type, reason, message) => events.push({ object, type, reason, message }) },
    workloads: {
      get: (kind, namespace, name) =>
        cached.has(`${kind}/${namespace}/${name}`) ? { metadata: { name, namespace, uid: `uid-${name}` } } : undefined,
    },
  });
  app = createHttpApp({
    callbackSecret: SECRET,
    metrics,
    logger,
    readiness: () => readiness,
    intake: () => (leading ? intake : undefined),
    now: () => clock,
  });
});

interface CallbackOptions {
  job?: string;
  results?: unknown[];
  context?: unknown;
  secret?: string;
  timestamp?: number;
  headers?: Record<string, string>;
  body?: string;
}

function callback(options: CallbackOptions = {}) {
  const job = options.job ?? 'job-1';
  const body =
    options.body ??
    JSON.stringify({
      job,
      context: 'context' in options ? options.context : { workloads: [KEY] },
      results: options.results ?? [{ source: NGINX, target: NGINX_TARGET, digest: DIGEST, status: 'copied', bytes: 10, ms: 5 }],
    });
  const timestamp = options.timestamp ?? Math.floor(clock / 1000);
  return {
    method: 'POST',
    body,
    headers: {
      'content-type': 'application/json',
      'x-clone-job': job,
      'x-clone-timestamp': String(timestamp),
      'x-clone-signature': signCallback(options.secret ?? SECRET, timestamp, body),
      ...options.headers,
    },
  };
}

async function post(init: ReturnType<typeof callback>) {
  const response = await app.request('/callback', init);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

const rejections = (reason: string) => metricValue(metrics.callbackRejections, { reason });

describe('callback: authentication', () => {
  it('accepts a callback signed by the function and records the verified backup', async () => {
    ledger.begin(NGINX, clock + 60_000);
    ledger.wait(NGINX, 'DaemonSet/default/agent');
    const { status, body } = await post(callback());
    expect(status).toBe(200);
    expect(body).toMatchObject({ job: 'job-1', accepted: 1, failed: 0, rejected: [] });
    expect(ledger.backupOf(NGINX)).toBe(NGINX_TARGET);
    expect(enqueued.sort()).toEqual(['DaemonSet/default/agent', KEY]);
  });

  it('refuses a callback without a signature', async () => {
    const init = callback();
    delete (init.headers as Record<string, string>)['x-clone-signature'];
    expect((await post(init)).status).toBe(401);
    expect(await rejections('missing_signature')).toBe(1);
    expect(ledger.backupOf(NGINX)).toBeUndefined();
    expect(enqueued).toEqual([]);
  });

  it('refuses a callback signed with another secret', async () => {
    expect((await post(callback({ secret: 'another-secret-0123456789abcdef' }))).status).toBe(401);
    expect(await rejections('bad_signature')).toBe(1);
    expect(ledger.backupOf(NGINX)).toBeUndefined();
  });

  it('refuses a body changed after signing', async () => {
    const init = callback();
    init.body = init.body.replace(NGINX_TARGET, `registry.example.com/backup/evil:1@${DIGEST}`);
    expect((await post(init)).status).toBe(401);
    expect(await rejections('bad_signature')).toBe(1);
  });

  it.each([
    ['more than 5 minutes old', -301],
    ['more than 5 minutes ahead', 301],
  ])('refuses a timestamp %s, and accepts one just within', async (_, offset) => {
    const now = Math.floor(clock / 1000);
    expect((await post(callback({ timestamp: now + offset }))).status).toBe(401);
    expect(await rejections('stale_timestamp')).toBe(1);
    expect((await post(callback({ timestamp: now + Math.sign(offset) * 300 }))).status).toBe(200);
  });

  it('refuses the same signed request twice', async () => {
    const init = callback();
    expect((await post(init)).status).toBe(200);
    expect((await post(init)).status).toBe(409);
    expect(await rejections('replay')).toBe(1);
    // Still refused later, when the timestamp has become stale anyway.
    clock += 20 * 60_000;
    expect((await post(init)).status).toBe(401);
  });

  it('acknowledges a job delivered again with a fresh signature without applying it twice', async () => {
    expect((await post(callback())).status).toBe(200);
    enqueued = [];
    clock += 5_000;
    const again = await post(callback());
    expect(again).toEqual({ status: 200, body: { job: 'job-1', duplicate: true } });
    expect(enqueued).toEqual([]);
  });

  it('refuses a job header that does not match the body', async () => {
    const init = callback({ headers: { 'x-clone-job': 'job-2' } });
    // The header is not signed: a mismatch means tampering or a confused sender.
    expect((await post(init)).status).toBe(400);
    expect(await rejections('job_mismatch')).toBe(1);
  });

  it('refuses a body that is not the callback shape, after checking the signature', async () => {
    expect((await post(callback({ body: '{"job":' }))).status).toBe(400);
    expect((await post(callback({ body: JSON.stringify({ job: 'j', results: 'nope' }) }))).status).toBe(400);
    // The context is the bridge's own (a list of workload keys) or nothing.
    expect((await post(callback({ context: KEY }))).status).toBe(400);
    expect((await post(callback({ context: { workloads: ['x'.repeat(601)] } }))).status).toBe(400);
    expect(await rejections('malformed')).toBe(4);
    expect((await post(callback({ job: 'no-context', context: null }))).status).toBe(200);
  });

  it('refuses a body over the size limit without reading it whole', async () => {
    const body = 'x'.repeat(MAX_CALLBACK_BYTES + 1);
    expect((await post(callback({ body }))).status).toBe(413);
    expect(await rejections('too_large')).toBe(1);
  });

  it('answers 503 on a replica that does not reconcile, so the function retries elsewhere', async () => {
    leading = false;
    expect((await post(callback())).status).toBe(503);
    expect(await rejections('not_leader')).toBe(1);
    leading = true;
    expect((await post(callback())).status).toBe(200);
  });
});

describe('callback: results checked against the bridge’s own mapping', () => {
  it('refuses a target that is not where the bridge would put the image, and patches nothing from it', async () => {
    const evil = `registry.example.com/backup/attacker/nginx:1.27@${DIGEST}`;
    const { status, body } = await post(
      callback({ results: [{ source: NGINX, target: evil, digest: DIGEST, status: 'copied' }] }),
    );
    expect(status).toBe(200);
    expect(body).toMatchObject({ accepted: 0, rejected: [{ source: NGINX, reason: 'target_mismatch' }] });
    expect(ledger.backupOf(NGINX)).toBeUndefined();
    expect(ledger.status(NGINX).state).toBe('failed');
    expect(await rejections('target_mismatch')).toBe(1);
    expect(enqueued).toEqual([KEY]);
  });

  it('refuses a target pinned to another digest than the one reported', async () => {
    const other = `sha256:${'d'.repeat(64)}`;
    const target = `registry.example.com/backup/docker.io/library/nginx:1.27@${other}`;
    const { body } = await post(callback({ results: [{ source: NGINX, target, digest: DIGEST, status: 'copied' }] }));
    expect(body).toMatchObject({ rejected: [{ reason: 'target_mismatch' }] });
  });

  it('refuses a digest that differs from the one the source is pinned to', async () => {
    const pinned = `docker.io/library/nginx@sha256:${'e'.repeat(64)}`;
    const target = `registry.example.com/backup/docker.io/library/nginx:digest-sha256-${'e'.repeat(64)}@${DIGEST}`;
    const { body } = await post(callback({ results: [{ source: pinned, target, digest: DIGEST, status: 'exists' }] }));
    expect(body).toMatchObject({ rejected: [{ reason: 'digest_mismatch' }] });
  });

  it('refuses a result without a valid digest', async () => {
    const { body } = await post(
      callback({ results: [{ source: NGINX, target: NGINX_TARGET, digest: 'sha256:nothex', status: 'copied' }] }),
    );
    expect(body).toMatchObject({ rejected: [{ reason: 'invalid_digest' }] });
  });

  it('matches a source however the function spelled it', async () => {
    const { body } = await post(
      callback({ results: [{ source: 'nginx:1.27', target: NGINX_TARGET, digest: DIGEST, status: 'exists' }] }),
    );
    expect(body).toMatchObject({ accepted: 1 });
    expect(ledger.backupOf(NGINX)).toBe(NGINX_TARGET);
  });

  it('records a failed copy with a retry time and tells the waiting workloads', async () => {
    ledger.wait(NGINX, 'Deployment/default/other');
    const { body } = await post(callback({ results: [{ source: NGINX, status: 'failed', error: 'manifest unknown', ms: 3 }] }));
    expect(body).toMatchObject({ accepted: 0, failed: 1 });
    expect(ledger.status(NGINX)).toMatchObject({ state: 'failed', error: 'manifest unknown' });
    expect(events).toEqual([
      {
        object: { kind: 'Deployment', namespace: 'default', name: 'other', uid: 'uid-other' },
        type: 'Warning',
        reason: 'BackupFailed',
        message: `Backup of ${NGINX} failed: manifest unknown`,
      },
    ]);
    expect(enqueued.sort()).toEqual(['Deployment/default/other', KEY]);
  });

  it('tells the workloads of the context about a failure when nobody here waited (the bridge restarted)', async () => {
    await post(callback({ results: [{ source: NGINX, status: 'failed', error: 'denied' }] }));
    expect(events.map(({ object, reason }) => ({ name: object.name, uid: object.uid, reason }))).toEqual([
      { name: 'web', uid: 'uid-web', reason: 'BackupFailed' },
    ]);
  });

  it('tells nothing on a workload that is gone from the cache', async () => {
    cached.clear();
    await post(callback({ results: [{ source: NGINX, status: 'failed', error: 'denied' }] }));
    expect(events).toEqual([]);
    expect(enqueued).toEqual([KEY]);
  });

  it('counts results that are not results and keeps the others', async () => {
    const { body } = await post(
      callback({ results: [{ nonsense: true }, { source: NGINX, target: NGINX_TARGET, digest: DIGEST, status: 'copied' }] }),
    );
    expect(body).toMatchObject({ accepted: 1, malformed: 1 });
    expect(await rejections('malformed_result')).toBe(1);
  });

  it('ignores context keys that are not workload keys', async () => {
    await post(callback({ context: { workloads: ['ReplicaSet/default/x', 'nonsense', KEY] } }));
    expect(enqueued).toEqual([KEY]);
  });

  it('counts each result once in every namespace whose workloads wanted it', async () => {
    const inNamespace = (namespace: string, status: string) => metricValue(metrics.namespaceImageResults, { namespace, status });
    ledger.begin(NGINX, clock + 60_000);
    ledger.wait(NGINX, 'Deployment/team-a/web');
    ledger.wait(NGINX, 'DaemonSet/team-a/agent');
    ledger.wait(NGINX, 'Deployment/team-b/api');
    await post(callback({ context: { workloads: ['Deployment/team-c/batch'] } }));
    expect([
      await inNamespace('team-a', 'copied'),
      await inNamespace('team-b', 'copied'),
      await inNamespace('team-c', 'copied'),
    ]).toEqual([1, 1, 1]);
    expect(await metricValue(metrics.imageResults, { status: 'copied' })).toBe(1);

    const other = 'docker.io/library/redis:7';
    ledger.wait(other, 'Deployment/team-b/api');
    await post(callback({ job: 'job-2', results: [{ source: other, status: 'failed', error: 'denied' }], context: null }));
    await post(
      callback({
        job: 'job-3',
        context: { workloads: ['Deployment/team-a/web'] },
        results: [{ source: NGINX, target: NGINX_TARGET.replace('/backup/', '/elsewhere/'), digest: DIGEST, status: 'copied' }],
      }),
    );
    expect(await inNamespace('team-b', 'failed')).toBe(1);
    expect(await inNamespace('team-a', 'rejected')).toBe(1);
    expect(await inNamespace('team-a', 'failed')).toBe(0);
    expect(await inNamespace('team-c', 'failed')).toBe(0);
  });
});

describe('probes and metrics', () => {
  it('answers /healthz always and /readyz only when ready', async () => {
    expect((await app.request('/healthz')).status).toBe(200);
    expect((await app.request('/readyz')).status).toBe(200);
    readiness = { ready: false, reason: 'informers not synced' };
    const response = await app.request('/readyz');
    expect(response.status).toBe(503);
    expect(await response.json()).toEqual({ status: 'not ready', reason: 'informers not synced' });
  });

  it('exposes the counters in Prometheus text format', async () => {
    await post(callback({ secret: 'wrong-secret-0123456789abcdefgh' }));
    metrics.queueDepth.set({}, 3);
    const response = await app.request('/metrics');
    expect(response.headers.get('content-type')).toContain('text/plain; version=0.0.4');
    const text = await response.text();
    expect(text).toContain('# TYPE image_clone_bridge_callback_rejections_total counter');
    expect(text).toContain('image_clone_bridge_callback_rejections_total{reason="bad_signature"} 1');
    expect(text).toContain('image_clone_bridge_queue_depth 3');
  });
});

describe('replay cache', () => {
  it('remembers ids for its TTL and forgets the oldest beyond its size', () => {
    let now = 0;
    const cache = new ReplayCache({ ttlMs: 1_000, maxEntries: 2, now: () => now });
    expect(cache.remember('a')).toBe(true);
    expect(cache.remember('a')).toBe(false);
    now = 1_000;
    expect(cache.remember('a')).toBe(true);
    expect(cache.remember('b')).toBe(true);
    expect(cache.remember('c')).toBe(true);
    expect(cache.size).toBe(2);
    expect(cache.has('a')).toBe(false);
    expect(cache.has('c')).toBe(true);
  });
});
