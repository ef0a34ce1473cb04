// The bridge against a real kube-apiserver: the RBAC in k8s/rbac applied as it is, the bridge
// running in this process with that ServiceAccount's token (so missing permissions fail the test),
// and a stand-in for the clone function that answers per docs/api.md. What is staged here needs
// the bridge in reach: its requests as the function receives them, a patch raced by another
// writer, the informers of one term of leadership across an API server restart. What a user sees
// of the whole system (images copied, workloads ignored, protected from deletion, a function
// outage, replicas handing over, synchronous mode) is told by the end-to-end tests.

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
import { FINALIZER, type WorkloadKind } from '../../bridge/workload.ts';
import { deliverCallback } from '../../functions/jobs.ts';
import { backupLocation, backupReference } from '../../functions/contract/index.ts';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import { startKubeCluster, type KubeCluster } from '../../testbed/kube-cluster.ts';
import { freePort } from '../../testbed/ports.ts';
import { waitFor as poll } from '../../testbed/wait.ts';

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
  stop(): Promise<void>;
}

async function startStandIn(): Promise<StandIn> {
  const deliveries = new Set<Promise<unknown>>();
  const standIn: StandIn = {
    url: '',
    requests: [],
    stop: async () => {
      await Promise.allSettled([...deliveries]);
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const result = (image: string) => {
    const source = normalise(image);
    return { source, target: backupOf(image), digest: digestOf(source), status: 'copied', bytes: 1, ms: 1 };
  };
  const quiet = { info() {}, warn() {}, error() {}, debug() {} };

  const app = new Hono();
  app.post('/clone', async (c) => {
    if (c.req.header('authorization') !== `Bearer ${AUTH_TOKEN}`) return c.json({ error: 'unauthorized' }, 401);
    const request = (await c.req.json()) as CloneRequest;
    standIn.requests.push(request);
    const results = request.images.map(result);
    if (request.callback === undefined) return c.json({ results });
    const job = randomBytes(8).toString('hex');
    const delivery = deliverCallback({
      fetch,
      url: request.callback.url,
      secret: CALLBACK_SECRET,
      job,
      body: JSON.stringify({ job, context: request.callback.context ?? null, results }),
      deadlineMs: 60_000,
      policy: { maxAttempts: 100, baseDelayMs: 100, maxDelayMs: 1_000, maxTotalMs: 60_000, maxRetryAfterMs: 1_000 },
      logger: quiet,
    });
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
  };
  spec: {
    template: { spec: { containers: { name: string; image: string }[]; initContainers?: { name: string; image: string }[] } };
  };
}

const imagesOf = (workload: Workload) => [
  ...(workload.spec.template.spec.initContainers ?? []).map((container) => container.image),
  ...workload.spec.template.spec.containers.map((container) => container.image),
];

function manifest(kind: WorkloadKind, name: string, images: string[]): string {
  const labels = { app: name };
  const podSpec = { containers: images.map((image, index) => ({ name: `c${index}`, image })) };
  return JSON.stringify({
    apiVersion: 'apps/v1',
    kind,
    metadata: { name, namespace: 'default', finalizers: [FINALIZER] },
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
  let bridge: Bridge;
  const logs: Record<string, unknown>[] = [];
  /** Runs before the bridge's next patch of a workload (keyed "Kind/namespace/name"), once. */
  const beforePatch = new Map<string, () => Promise<void>>();

  const kubectl = async (args: string[], input?: string) => {
    const result = await cluster.kubectl(args, input === undefined ? {} : { input });
    if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')}: ${result.stderr}`);
    return result.stdout;
  };
  const get = async (kind: WorkloadKind, name: string): Promise<Workload | undefined> => {
    const result = await cluster.kubectl(['get', kind.toLowerCase(), name, '-n', 'default', '-o', 'json']);
    if (result.code !== 0) {
      if (result.stderr.includes('NotFound')) return undefined;
      throw new Error(result.stderr);
    }
    return JSON.parse(result.stdout) as Workload;
  };
  /** Waits until the workload's images are all backups and our finalizer is gone. */
  const backedUp = (kind: WorkloadKind, name: string, images: string[]) =>
    waitFor(`${kind} default/${name} backed up and released`, async () => {
      const workload = await get(kind, name);
      if (workload === undefined) return undefined;
      const done =
        isDeepEqual(imagesOf(workload), images.map(backupOf)) && !(workload.metadata.finalizers ?? []).includes(FINALIZER);
      return done ? workload : undefined;
    });
  const conflicts = (kind: WorkloadKind) => metricValue(bridge.metrics.patches, { kind, result: 'conflict' });

  const startOne = async (name: string) => {
    const port = await freePort();
    const config = loadConfig({
      KUBECONFIG: serviceAccountKubeconfig,
      FUNCTION_URL: standIn.url,
      AUTH_TOKEN,
      CALLBACK_SECRET,
      CALLBACK_URL: `http://127.0.0.1:${port}/callback`,
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
        return Object.fromEntries(Object.entries(apis).map(([kind, api]) => [kind, interposed(api!)]));
      },
      tuning: {
        informer: { restartBaseMs: 200, restartMaxMs: 2_000 },
        queue: { baseDelayMs: 100, maxDelayMs: 2_000 },
        // Long enough for the leader to ride out the API server restart below (its informers must
        // recover on their own).
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
    // The backup location is the ConfigMap's, as an operator sets it: the admission guardrails read
    // it there to hold the bridge's image patches to the backup.
    await kubectl([
      'patch',
      'configmap',
      'image-cloner-config',
      '-n',
      NAMESPACE,
      '--type=merge',
      '-p',
      JSON.stringify({ data: { BACKUP_REGISTRY: backup.registry, BACKUP_NAMESPACE: backup.namespace } }),
    ]);
    ignoreNamespaces = (
      await kubectl(['get', 'configmap', 'image-cloner-config', '-n', NAMESPACE, '-o', 'jsonpath={.data.IGNORE_NAMESPACES}'])
    ).trim();
    serviceAccountKubeconfig = await cluster.serviceAccountKubeconfig(NAMESPACE, 'image-cloner');
    standIn = await startStandIn();
    bridge = await startOne('bridge-1');
    await waitFor('the bridge to lead and sync', async () => bridge.controller()?.synced);
  });

  afterAll(async () => {
    await bridge?.stop();
    await standIn?.stop();
    await cluster?.stop();
  });

  it('asks the function once per workload, naming the workload in the callback context, and times it', async () => {
    const images = ['busybox:1.36', 'quay.io/prometheus/node-exporter:v1.8.2'];
    await kubectl(['apply', '-f', '-'], manifest('DaemonSet', 'agent', images));
    await backedUp('DaemonSet', 'agent', images);
    const requests = requested(standIn, 'busybox:1.36');
    expect(requests).toHaveLength(1);
    expect(requests[0]!.images.sort()).toEqual(['docker.io/library/busybox:1.36', 'quay.io/prometheus/node-exporter:v1.8.2']);
    expect(requests[0]!.callback?.context).toEqual({ workloads: ['DaemonSet/default/agent'] });
    // Nobody else writes this object: no patch of the bridge's may have been refused.
    expect(await conflicts('DaemonSet')).toBe(0);
    // The reconciles and the copies, each timed from its request to its result, are in /metrics.
    const metrics = await (await fetch(`${bridge.url}/metrics`)).text();
    expect(metrics).toMatch(/^image_clone_bridge_reconcile_duration_seconds_count\{kind="DaemonSet"\} [1-9]/m);
    expect(metrics).toMatch(/^image_clone_bridge_clone_latency_seconds_count\{status="copied"\} 2$/m);
  });

  it('refuses a patch computed from a spec that changed meanwhile, and retries from the current one', async () => {
    const conflictsBefore = await conflicts('Deployment');
    // Someone changes the image between the bridge's read and its patch.
    beforePatch.set('Deployment/default/racy', async () => {
      await kubectl(['set', 'image', 'deployment/racy', 'c0=redis:7.4', '-n', 'default']);
    });
    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'racy', ['memcached:1.6']));
    const racy = await backedUp('Deployment', 'racy', ['redis:7.4']);
    expect(await conflicts('Deployment')).toBeGreaterThan(conflictsBefore);
    // The stale patch did not land: the workload points at the backup of the image it has now.
    expect(imagesOf(racy)).toEqual([backupOf('redis:7.4')]);
    expect(requested(standIn, 'redis:7.4').length).toBeGreaterThan(0);
  });

  it('keeps up with changes made across an API server restart, its informers recovering within one term', async () => {
    const controller = bridge.controller();
    await kubectl(['apply', '-f', '-'], manifest('Deployment', 'app', ['traefik:3.0']));
    await backedUp('Deployment', 'app', ['traefik:3.0']);

    // One change the bridge has barely seen when the API server dies, another made the moment it
    // is back, while the bridge's watches are still broken and reconnecting with backoff.
    await kubectl(['set', 'image', 'deployment/app', 'c0=traefik:3.1', '-n', 'default']);
    await cluster.stopApiServer({ abrupt: true });
    await cluster.startApiServer();
    await kubectl(['apply', '-f', '-'], manifest('DaemonSet', 'late', ['traefik:3.2']));

    await backedUp('Deployment', 'app', ['traefik:3.1']);
    await backedUp('DaemonSet', 'late', ['traefik:3.2']);
    // The same term of leadership: the informers restarted their broken watches themselves.
    expect(bridge.controller()).toBe(controller);
    expect(await metricValue(bridge.metrics.watchRestarts, { kind: 'Deployment', reason: 'error' })).toBeGreaterThan(0);
    expect(logs.some((line) => line.msg === 'watch failed; restarting it')).toBe(true);
  });
});

function isDeepEqual(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}
