// The bridge against a real kube-apiserver: the RBAC in k8s/rbac applied as it is, the bridge
// running with that ServiceAccount's token (so missing permissions fail the test), the example
// workloads from k8s/setup, and a stand-in for the clone function that answers per docs/api.md
// (the real function is wired in by the end-to-end tests).

import { serve } from '@hono/node-server';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { Hono } from 'hono';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startBridge, type Bridge } from '../../bridge/app.ts';
import { loadConfig } from '../../bridge/config.ts';
import { metricValue } from '../../bridge/metrics.ts';
import type { WorkloadApi } from '../../bridge/kube/api.ts';
import { FINALIZER, OPT_OUT_ANNOTATION, type WorkloadKind } from '../../bridge/workload.ts';
import { deliverCallback } from '../../functions/jobs.ts';
import { backupLocation, backupReference } from '../../functions/contract/index.ts';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import { startKubeCluster, type KubeCluster } from '../support/kube-cluster.ts';
import { freePort } from '../support/ports.ts';
import { waitFor as poll } from '../support/wait.ts';

const repoRoot = fileURLToPath(new URL('../../', import.meta.url));
const AUTH_TOKEN = randomBytes(16).toString('hex');
const CALLBACK_SECRET = randomBytes(16).toString('hex');
const backup = backupLocation('registry.example.com', 'backup');
const NAMESPACE = 'image-clone-controller';

const digestOf = (source: string) => `sha256:${createHash('sha256').update(source).digest('hex')}`;
const normalise = (image: string) => formatReference(parseReference(image));
/** Where the bridge must point an image: the backup, pinned by the digest the stand-in reports. */
const backupOf = (image: string) =>
  `${formatReference(backupReference(parseReference(image), backup))}@${digestOf(normalise(image))}`;

// --- a stand-in for the clone function -----------------------------------------------------------

interface CloneRequest {
  images: string[];
  callback?: { url: string; context?: unknown };
}

interface StandIn {
  url: string;
  requests: CloneRequest[];
  /** Answer 503 to every request while true. */
  down: boolean;
  refused: number;
  /** Results for these (normalised) images wait until released. */
  hold(image: string): void;
  release(image: string): void;
  stop(): Promise<void>;
}

async function startStandIn(): Promise<StandIn> {
  const held = new Map<string, { promise: Promise<void>; release: () => void }>();
  const deliveries = new Set<Promise<unknown>>();
  const standIn: StandIn = {
    url: '',
    requests: [],
    down: false,
    refused: 0,
    hold(image) {
      let release!: () => void;
      const promise = new Promise<void>((resolve) => (release = resolve));
      held.set(normalise(image), { promise, release });
    },
    release(image) {
      held.get(normalise(image))?.release();
      held.delete(normalise(image));
    },
    stop: async () => {
      for (const gate of held.values()) gate.release();
      await Promise.allSettled([...deliveries]);
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const result = async (image: string) => {
    const source = normalise(image);
    await held.get(source)?.promise;
    return { source, target: backupOf(image), digest: digestOf(source), status: 'copied', bytes: 1, ms: 1 };
  };
  const quiet = { info() {}, warn() {}, error() {}, debug() {} };

  const app = new Hono();
  app.post('/clone', async (c) => {
    if (c.req.header('authorization') !== `Bearer ${AUTH_TOKEN}`) return c.json({ error: 'unauthorized' }, 401);
    if (standIn.down) {
      standIn.refused++;
      return c.json({ error: 'down for maintenance' }, 503);
    }
    const request = (await c.req.json()) as CloneRequest;
    standIn.requests.push(request);
    const results = Promise.all(request.images.map(result));
    if (request.callback === undefined) return c.json({ results: await results });
    const job = randomBytes(8).toString('hex');
    const delivery = results.then((done) =>
      deliverCallback({
        fetch,
        url: request.callback!.url,
        secret: CALLBACK_SECRET,
        job,
        body: JSON.stringify({ job, context: request.callback!.context ?? null, results: done }),
        deadlineMs: 60_000,
        policy: { maxAttempts: 100, baseDelayMs: 100, maxDelayMs: 1_000, maxTotalMs: 60_000, maxRetryAfterMs: 1_000 },
        logger: quiet,
      }),
    );
    deliveries.add(delivery);
    void delivery.finally(() => deliveries.delete(delivery));
    return c.json({ job }, 202);
  });
  const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' });
  await once(server, 'listening');
  standIn.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return standIn;
}

// --- helpers --------------------------------------------------------------------------------------

function waitFor<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = 40_000): Promise<T> {
  return poll(what, probe, timeoutMs, 150);
}

interface Workload {
  metadata: {
    name: string;
    namespace: string;
    resourceVersion: string;
    finalizers?: string[];
    deletionTimestamp?: string;
    uid: string;
  };
  spec: {
    template: { spec: { containers: { name: string; image: string }[]; initContainers?: { name: string; image: string }[] } };
  };
}

const imagesOf = (workload: Workload) => [
  ...(workload.spec.template.spec.initContainers ?? []).map((container) => container.image),
  ...workload.spec.template.spec.containers.map((container) => container.image),
];

function manifest(
  kind: WorkloadKind,
  name: string,
  images: string[],
  options: { namespace?: string; finalizer?: boolean; annotations?: Record<string, string> } = {},
): string {
  const labels = { app: name };
  const podSpec = { containers: images.map((image, index) => ({ name: `c${index}`, image })) };
  return JSON.stringify({
    apiVersion: 'apps/v1',
    kind,
    metadata: {
      name,
      namespace: options.namespace ?? 'default',
      ...(options.finalizer !== false && { finalizers: [FINALIZER] }),
      ...(options.annotations && { annotations: options.annotations }),
    },
    spec: { selector: { matchLabels: labels }, template: { metadata: { labels }, spec: podSpec } },
  });
}

function requested(standIn: StandIn, image: string): CloneRequest[] {
  return standIn.requests.filter((request) => request.images.includes(normalise(image)));
}

// --- the scenarios --------------------------------------------------------------------------------

describe('bridge against a real kube-apiserver', () => {
  let cluster: KubeCluster;
  let standIn: StandIn;
  let serviceAccountKubeconfig: string;
  let ignoreNamespaces: string;
  let first: Bridge;
  let second: Bridge | undefined;
  const logs: Record<string, unknown>[] = [];
  /** Runs before the bridge's next patch of a workload (keyed "Kind/namespace/name"), once. */
  const beforePatch = new Map<string, () => Promise<void>>();

  const kubectl = async (args: string[], input?: string) => {
    const result = await cluster.kubectl(args, input === undefined ? {} : { input });
    if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${result.stderr}`);
    return result.stdout;
  };
  const get = async (kind: WorkloadKind, name: string, namespace = 'default'): Promise<Workload | undefined> => {
    const result = await cluster.kubectl(['get', kind.toLowerCase(), name, '-n', namespace, '-o', 'json']);
    if (result.code !== 0) {
      if (result.stderr.includes('NotFound')) return undefined;
      throw new Error(result.stderr);
    }
    return JSON.parse(result.stdout) as Workload;
  };
  /** Waits until the workload's images are all backups and our finalizer is gone. */
  const backedUp = (kind: WorkloadKind, name: string, images: string[], namespace = 'default') =>
    waitFor(`${kind} ${namespace}/${name} backed up and released`, async () => {
      const workload = await get(kind, name, namespace);
      if (workload === undefined) return undefined;
      const done =
        isDeepEqual(imagesOf(workload), images.map(backupOf)) && !(workload.metadata.finalizers ?? []).includes(FINALIZER);
      return done ? workload : undefined;
    });

  const startOne = async (name: string, options: { callback: boolean }) => {
    const port = await freePort();
    const config = loadConfig({
      KUBECONFIG: serviceAccountKubeconfig,
      FUNCTION_URL: standIn.url,
      AUTH_TOKEN,
      CALLBACK_SECRET,
      ...(options.callback && { CALLBACK_URL: `http://127.0.0.1:${port}/callback` }),
      BACKUP_REGISTRY: backup.registry,
      BACKUP_NAMESPACE: backup.namespace,
      IGNORE_NAMESPACES: ignoreNamespaces,
      PORT: String(port),
      WORKERS: '4',
      LEADER_ELECTION: 'true',
      POD_NAMESPACE: NAMESPACE,
      POD_NAME: name,
      LOG_LEVEL: 'debug',
    });
    const logger = pino(
      { level: 'debug', base: { bridge: name } },
      new Writable({
        write(chunk, _encoding, done) {
          for (const line of String(chunk).split('\n').filter(Boolean)) logs.push(JSON.parse(line) as Record<string, unknown>);
          done();
        },
      }),
    );
    return startBridge({
      config,
      logger,
      host: '127.0.0.1',
      workloadApis: (apis) => {
        const interposed = (api: WorkloadApi): WorkloadApi => ({
          ...api,
          patch: async (namespace, workloadName, operations) => {
            const key = `${api.kind}/${namespace}/${workloadName}`;
            const hook = beforePatch.get(key);
            beforePatch.delete(key);
            await hook?.();
            return api.patch(namespace, workloadName, operations);
          },
        });
        return { Deployment: interposed(apis.Deployment), DaemonSet: interposed(apis.DaemonSet) };
      },
      tuning: {
        informer: { restartBaseMs: 200, restartMaxMs: 2_000 },
        queue: { baseDelayMs: 100, maxDelayMs: 2_000 },
        ledger: { failureBaseMs: 200, failureMaxMs: 1_000 },
        // Long enough for the leader to ride out the API server restart below (its informers must
        // recover on their own); a released lease is taken over at once anyway.
        leaderElection: { leaseDurationMs: 30_000, renewDeadlineMs: 20_000, retryPeriodMs: 500 },
      },
    });
  };

  beforeAll(async () => {
    cluster = await startKubeCluster();
    // The manifests exactly as an operator applies them.
    await kubectl(['apply', '-f', `${repoRoot}k8s/rbac`]);
    await kubectl(['apply', '-f', `${repoRoot}k8s/secrets`]);
    await kubectl(['apply', '-f', `${repoRoot}k8s/setup/cloner-deployment.yml`]);
    ignoreNamespaces = (
      await kubectl(['get', 'configmap', 'image-cloner-config', '-n', NAMESPACE, '-o', 'jsonpath={.data.IGNORE_NAMESPACES}'])
    ).trim();
    serviceAccountKubeconfig = await cluster.serviceAccountKubeconfig(NAMESPACE, 'image-cloner');
    standIn = await startStandIn();
    // Present before the bridge starts: seen in its first list, never touched.
    await kubectl(
      ['apply', '-f', '-'],
      manifest('Deployment', 'system-thing', ['registry.k8s.io/pause:3.10'], { namespace: 'kube-system', finalizer: false }),
    );
    first = await startOne('bridge-1', { callback: true });
    await waitFor('the first bridge to lead and sync', async () => first.controller()?.synced);
  });

  afterAll(async () => {
    await second?.stop();
    await first?.stop();
    await standIn?.stop();
    await cluster?.stop();
  });

  it('backs up, patches and releases the example Deployment and DaemonSet from k8s/setup', async () => {
    await kubectl(['apply', '-f', `${repoRoot}k8s/setup/app-deployment.yml`, '-f', `${repoRoot}k8s/setup/app-daemonset.yml`]);
    const nginx = await backedUp('Deployment', 'nginx', ['nginx:1.27']);
    const exporter = await backedUp('DaemonSet', 'node-exporter', ['busybox:1.36', 'quay.io/prometheus/node-exporter:v1.8.2']);
    expect(imagesOf(nginx)).toEqual([
      `registry.example.com/backup/docker.io/library/nginx:1.27@${digestOf('docker.io/library/nginx:1.27')}`,
    ]);
    expect(nginx.metadata.finalizers ?? []).toEqual([]);
    expect(exporter.metadata.finalizers ?? []).toEqual([]);
    // Nobody else writes these objects: no patch of the bridge's may have been refused.
    expect(await metricValue(first.metrics.patches, { kind: 'Deployment', result: 'conflict' })).toBe(0);
    expect(await metricValue(first.metrics.patches, { kind: 'DaemonSet', result: 'conflict' })).toBe(0);

    // One request per workload, carrying the workload in the callback context.
    const daemonSetRequest = requested(standIn, 'busybox:1.36')[0]!;
    expect(daemonSetRequest.images.sort()).toEqual(['docker.io/library/busybox:1.36', 'quay.io/prometheus/node-exporter:v1.8.2']);
    expect(daemonSetRequest.callback?.context).toEqual({ workloads: ['DaemonSet/default/node-exporter'] });

    // kubectl describe tells the story.
    const events = await waitFor('events on nginx', async () => {
      const list = JSON.parse(
        await kubectl(['get', 'events', '-n', 'default', '--field-selector', 'involvedObject.name=nginx', '-o', 'json']),
      ) as {
        items: { reason: string; type: string; involvedObject: { uid: string; kind: string } }[];
      };
      const reasons = list.items.map((event) => event.reason);
      return reasons.includes('BackedUp') && reasons.includes('Released') ? list.items : undefined;
    });
    expect(events.every((event) => event.involvedObject.uid === nginx.metadata.uid && event.type === 'Normal')).toBe(true);

    // And so do the logs, in the seed's words, with their fields.
    const messages = logs.map((line) => line.msg);
    expect(messages).toContain('Image Cloner: starting cloning process');
    expect(
      logs.find((line) => line.msg === 'DaemonSet reconciler: starting reconciliation' && line.image === 'busybox:1.36'),
    ).toMatchObject({ namespace: 'default', name: 'node-exporter' });
    expect(logs.find((line) => line.msg === 'DaemonSet reconciler: reconciliation successfully finished')).toMatchObject({
      namespace: 'default',
      name: 'node-exporter',
    });
    expect(logs.find((line) => line.msg === 'Deployment reconciler: reconciliation successfully finished')).toMatchObject({
      namespace: 'default',
      name: 'nginx',
    });
    expect(
      logs.find((line) => line.msg === 'Deployment reconciler: image pointed at its backup' && line.name === 'nginx'),
    ).toMatchObject({
      image: 'nginx:1.27',
      target: imagesOf(nginx)[0],
      digest: digestOf('docker.io/library/nginx:1.27'),
    });
  });

  it('leaves kube-system and the ignored namespaces untouched', async () => {
    const before = (await get('Deployment', 'system-thing', 'kube-system'))!;
    first.controller()!.resync();
    await first.controller()!.queue.idle();
    const after = (await get('Deployment', 'system-thing', 'kube-system'))!;
    expect(after.metadata.resourceVersion).toBe(before.metadata.resourceVersion);
    expect(imagesOf(after)).toEqual(['registry.k8s.io/pause:3.10']);
    expect(requested(standIn, 'registry.k8s.io/pause:3.10')).toEqual([]);
    // The controller's own Deployments (k8s/setup) are in an ignored namespace.
    const own = (await get('Deployment', 'image-cloner-deployment', NAMESPACE))!;
    expect(imagesOf(own)).toEqual(['ghcr.io/image-clone-controller/image-clone-controller:latest']);
    expect(requested(standIn, 'ghcr.io/image-clone-controller/image-clone-controller:latest')).toEqual([]);
  });

  it('releases an opted-out workload without copying or changing its images', async () => {
    await kubectl(
      ['apply', '-f', '-'],
      manifest('Deployment', 'opted-out', ['httpd:2.4'], { annotations: { [OPT_OUT_ANNOTATION]: 'true' } }),
    );
    const released = await waitFor('opted-out released', async () => {
      const workload = await get('Deployment', 'opted-out');
      return workload && !(workload.metadata.finalizers ?? []).includes(FINALIZER) ? workload : undefined;
    });
    expect(imagesOf(released)).toEqual(['httpd:2.4']);
    expect(requested(standIn, 'httpd:2.4')).toEqual([]);
  });

  it('refuses a patch computed from a spec that changed meanwhile, and retries from the current one', async () => {
    const conflictsBefore = await metricValue(first.metrics.patches, { kind: 'Deployment', result: 'conflict' });
    // Someone changes the image between the bridge's read and its patch.
    beforePatch.set('Deployment/default/racy', async () => {
      await kubectl(['set', 'image', 'deployment/racy', 'c0=redis:7.4', '-n', 'default']);
    });
    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'racy', ['memcached:1.6']));
    const racy = await backedUp('Deployment', 'racy', ['redis:7.4']);
    expect(await metricValue(first.metrics.patches, { kind: 'Deployment', result: 'conflict' })).toBeGreaterThan(conflictsBefore);
    // The stale patch did not land: the workload points at the backup of the image it has now.
    expect(imagesOf(racy)).toEqual([backupOf('redis:7.4')]);
    expect(requested(standIn, 'redis:7.4').length).toBeGreaterThan(0);
  });

  it('keeps a workload deleted before its copy finished until the copy is done, then lets it go', async () => {
    standIn.hold('memcached:1.5');
    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'doomed', ['memcached:1.5']));
    await waitFor('the copy to be requested', async () => requested(standIn, 'memcached:1.5').length > 0);
    await kubectl(['delete', 'deployment', 'doomed', '-n', 'default', '--wait=false']);
    const deleting = await waitFor('deletionTimestamp', async () => {
      const workload = await get('Deployment', 'doomed');
      return workload?.metadata.deletionTimestamp ? workload : undefined;
    });
    expect(deleting.metadata.finalizers).toContain(FINALIZER);
    // Nothing releases it while the copy is still running, not even a full resync.
    first.controller()!.resync();
    await first.controller()!.queue.idle();
    expect((await get('Deployment', 'doomed'))?.metadata.finalizers).toContain(FINALIZER);
    expect(imagesOf((await get('Deployment', 'doomed'))!)).toEqual(['memcached:1.5']);
    standIn.release('memcached:1.5');
    await waitFor('the deleted workload to disappear', async () => (await get('Deployment', 'doomed')) === undefined);
  });

  it('converges once the function comes back after being down', async () => {
    standIn.down = true;
    const refusedBefore = standIn.refused;
    await kubectl(['apply', '-f', '-'], manifest('DaemonSet', 'flaky', ['postgres:17']));
    await waitFor('retries while the function is down', async () => standIn.refused >= refusedBefore + 2);
    expect((await get('DaemonSet', 'flaky'))!.metadata.finalizers).toContain(FINALIZER);
    // kubectl describe shows the failure, once, counted (repeats patch the same Event).
    const failed = await waitFor('a counted BackupFailed event', async () => {
      const list = JSON.parse(
        await kubectl(['get', 'events', '-n', 'default', '--field-selector', 'involvedObject.name=flaky', '-o', 'json']),
      ) as {
        items: { reason: string; type: string; count?: number; message: string }[];
      };
      const events = list.items.filter((event) => event.reason === 'BackupFailed');
      return events.length === 1 && (events[0]!.count ?? 0) >= 2 ? events[0] : undefined;
    });
    expect(failed).toMatchObject({ type: 'Warning', message: expect.stringContaining('HTTP 503') });
    standIn.down = false;
    await backedUp('DaemonSet', 'flaky', ['postgres:17']);
  });

  it('keeps watching through an API server restart', async () => {
    const controller = first.controller();
    await cluster.restartApiServer();
    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'after-restart', ['traefik:3.1']));
    await backedUp('Deployment', 'after-restart', ['traefik:3.1']);
    // The same term of leadership: the informers restarted their broken watches themselves.
    expect(first.controller()).toBe(controller);
    expect(await metricValue(first.metrics.watchRestarts, { kind: 'Deployment', reason: 'error' })).toBeGreaterThan(0);
  });

  it('hands over to a standby replica, which also works without callbacks (synchronous mode)', async () => {
    second = await startOne('bridge-2', { callback: false });
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(first.leading()).toBe(true);
    expect(second.leading()).toBe(false);
    expect((await fetch(`${second.url}/readyz`)).status).toBe(503);
    expect((await fetch(`${first.url}/readyz`)).status).toBe(200);

    await first.stop();
    await waitFor('the standby to take over', async () => second!.controller()?.synced);
    expect((await fetch(`${second.url}/readyz`)).status).toBe(200);
    const holder = (
      await kubectl(['get', 'lease', 'image-clone-controller', '-n', NAMESPACE, '-o', 'jsonpath={.spec.holderIdentity}'])
    ).trim();
    expect(holder).toBe('bridge-2');

    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'synchronous', ['alpine:3.20']));
    await backedUp('Deployment', 'synchronous', ['alpine:3.20']);
    expect(requested(standIn, 'alpine:3.20').every((request) => request.callback === undefined)).toBe(true);
  });
});

function isDeepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
