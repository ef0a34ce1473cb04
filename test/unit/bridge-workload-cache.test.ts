import {
  HttpMethod,
  KubeConfig,
  RequestContext,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { describe, expect, it, vi } from 'vitest';
import { reuseConnections } from '../../bridge/kube/connections.ts';
import { listInPages, slimWorkload } from '../../bridge/kube/workload-cache.ts';
import { decide } from '../../bridge/reconcile/decide.ts';
import { FINALIZER, OPT_OUT_ANNOTATION } from '../../bridge/workload.ts';

const deployments = (object: unknown) => slimWorkload('Deployment', object);
import { backupLocation } from '../../functions/contract/index.ts';

/** A Deployment as the API server serves it, with the bulk the bridge never reads. */
function servedDeployment(overrides: { annotations?: Record<string, string>; deletionTimestamp?: string } = {}) {
  return {
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: {
      name: 'web',
      namespace: 'shop',
      uid: 'a1b2',
      resourceVersion: '42',
      generation: 3,
      labels: { app: 'web' },
      annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{"huge":"x"}', ...overrides.annotations },
      finalizers: [FINALIZER],
      managedFields: [{ manager: 'kubectl', operation: 'Update', fieldsV1: { 'f:spec': {} } }],
      ...(overrides.deletionTimestamp !== undefined && { deletionTimestamp: overrides.deletionTimestamp }),
    },
    spec: {
      replicas: 2,
      selector: { matchLabels: { app: 'web' } },
      template: {
        metadata: { labels: { app: 'web' } },
        spec: {
          initContainers: [{ name: 'migrate', image: 'migrate:1', command: ['run'] }],
          containers: [
            { name: 'app', image: 'nginx:1.27', env: [{ name: 'A', value: 'b' }], ports: [{ containerPort: 80 }] },
            { name: 'odd' },
            { name: 'proxy', image: 'envoy:1.30', resources: { limits: { memory: '1Gi' } } },
          ],
        },
      },
    },
    status: { replicas: 2, conditions: [{ type: 'Available', status: 'True' }] },
  };
}

describe('slimWorkload', () => {
  it('keeps exactly the fields the bridge reads, containers in their places', () => {
    expect(slimWorkload('Deployment', servedDeployment({ deletionTimestamp: '2026-11-27T00:00:00Z' }))).toEqual({
      metadata: {
        name: 'web',
        namespace: 'shop',
        uid: 'a1b2',
        resourceVersion: '42',
        // None the bridge reads, but the object has annotations (how a patch adds one depends on it).
        annotations: {},
        finalizers: [FINALIZER],
        deletionTimestamp: '2026-11-27T00:00:00Z',
      },
      spec: {
        template: {
          spec: {
            initContainers: [{ name: 'migrate', image: 'migrate:1' }],
            containers: [{ name: 'app', image: 'nginx:1.27' }, { name: 'odd' }, { name: 'proxy', image: 'envoy:1.30' }],
          },
        },
      },
    });
  });

  it('keeps the opt-out annotation and drops the others', () => {
    const slim = slimWorkload('Deployment', servedDeployment({ annotations: { [OPT_OUT_ANNOTATION]: 'true', other: 'x' } }));
    expect(slim.metadata?.annotations).toEqual({ [OPT_OUT_ANNOTATION]: 'true' });
  });

  it('is idempotent and tolerates objects without metadata or spec', () => {
    const once = slimWorkload('Deployment', servedDeployment());
    expect(slimWorkload('Deployment', once)).toEqual(once);
    expect(slimWorkload('Deployment', undefined)).toEqual({});
    expect(slimWorkload('Deployment', { metadata: { name: 'x' } })).toEqual({ metadata: { name: 'x' } });
  });

  it('leads to the same decision as the full object', () => {
    const context = {
      backup: backupLocation('registry.example.com', 'backup'),
      ignoredNamespaces: new Set(['kube-system']),
      // One image already backed up, so the decision both copies and replaces.
      knownBackup: (source: string) =>
        source === 'docker.io/library/nginx:1.27' ? 'registry.example.com/backup/nginx:1.27@sha256:' + 'a'.repeat(64) : undefined,
      defaultMode: 'pin' as const,
    };
    for (const object of [
      servedDeployment(),
      servedDeployment({ annotations: { [OPT_OUT_ANNOTATION]: 'true' } }),
      servedDeployment({ deletionTimestamp: '2026-11-27T00:00:00Z' }),
    ]) {
      expect(decide('Deployment', slimWorkload('Deployment', object), context)).toEqual(decide('Deployment', object, context));
    }
  });
});

describe('slimWorkload: every kind', () => {
  it("keeps a CronJob's pod spec where it is, under jobTemplate", () => {
    const cronJob = {
      metadata: { name: 'nightly', namespace: 'a', labels: { x: 'y' } },
      spec: {
        schedule: '0 3 * * *',
        jobTemplate: {
          spec: { backoffLimit: 2, template: { spec: { containers: [{ name: 'job', image: 'busybox:1.36', args: ['x'] }] } } },
        },
      },
    };
    expect(slimWorkload('CronJob', cronJob)).toEqual({
      metadata: { name: 'nightly', namespace: 'a' },
      spec: { jobTemplate: { spec: { template: { spec: { containers: [{ name: 'job', image: 'busybox:1.36' }] } } } } },
    });
  });

  it("keeps a Pod's ephemeral containers, pull secrets and ServiceAccount", () => {
    const pod = {
      metadata: { name: 'p', namespace: 'a' },
      spec: {
        serviceAccountName: 'builder',
        imagePullSecrets: [{ name: 'regcred' }, {}],
        containers: [{ name: 'app', image: 'nginx:1.27', resources: {} }],
        ephemeralContainers: [{ name: 'debug', image: 'busybox:1.36', stdin: true }],
        nodeName: 'n1',
      },
      status: { phase: 'Running' },
    };
    expect(slimWorkload('Pod', pod)).toEqual({
      metadata: { name: 'p', namespace: 'a' },
      spec: {
        containers: [{ name: 'app', image: 'nginx:1.27' }],
        ephemeralContainers: [{ name: 'debug', image: 'busybox:1.36' }],
        imagePullSecrets: [{ name: 'regcred' }],
        serviceAccountName: 'builder',
      },
    });
  });

  it('keeps a Pod or Job that has an owner as little more than its name', () => {
    const owned = {
      metadata: {
        name: 'web-7d9-x',
        namespace: 'a',
        uid: 'u',
        ownerReferences: [{ kind: 'ReplicaSet', name: 'web-7d9', controller: true }],
      },
      spec: { containers: [{ name: 'app', image: 'nginx:1.27' }] },
    };
    expect(slimWorkload('Pod', owned)).toEqual({
      metadata: { name: 'web-7d9-x', namespace: 'a', uid: 'u', ownerReferences: [{ controller: true }] },
    });
    // A Deployment's owner (rare, an operator's) does not make it someone else's: it is watched as any.
    expect(slimWorkload('Deployment', { ...owned, spec: { template: { spec: owned.spec } } }).spec).toBeDefined();
  });
});

describe('listInPages', () => {
  it('follows continue tokens, projects every item and keeps the first page’s resourceVersion', async () => {
    const asked: (string | undefined)[] = [];
    const pages = new Map<string | undefined, { rv: string; next?: string; names: string[] }>([
      [undefined, { rv: '100', next: 't1', names: ['a', 'b'] }],
      ['t1', { rv: '100', next: 't2', names: ['c'] }],
      ['t2', { rv: '100', names: ['d'] }],
    ]);
    const list = await listInPages(deployments, async (token) => {
      asked.push(token);
      const page = pages.get(token)!;
      return {
        metadata: { resourceVersion: page.rv, ...(page.next !== undefined && { _continue: page.next }) },
        items: page.names.map((name) => ({ ...servedDeployment(), metadata: { ...servedDeployment().metadata, name } })),
      } as unknown as KubernetesListObject<KubernetesObject>;
    });
    expect(asked).toEqual([undefined, 't1', 't2']);
    expect(list.metadata?.resourceVersion).toBe('100');
    expect(list.items.map((item) => item.metadata?.name)).toEqual(['a', 'b', 'c', 'd']);
    expect(list.items.every((item) => !('status' in item) && item.metadata?.managedFields === undefined)).toBe(true);
  });

  it('fails as a whole when a page fails', async () => {
    await expect(
      listInPages(deployments, async (token) => {
        if (token === undefined) return { metadata: { _continue: 'next' }, items: [] };
        throw new Error('410 Gone: continue token expired');
      }),
    ).rejects.toThrow('410 Gone');
  });
});

describe('reuseConnections', () => {
  function tlsConfig(): KubeConfig {
    const config = new KubeConfig();
    config.loadFromOptions({
      clusters: [{ name: 'c', server: 'https://127.0.0.1:6443', skipTLSVerify: true }],
      users: [{ name: 'u', token: 'not-a-secret' }],
      contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
      currentContext: 'x',
    });
    return config;
  }

  async function dispatcherOf(config: KubeConfig): Promise<unknown> {
    const context = new RequestContext('https://127.0.0.1:6443/api', HttpMethod.GET);
    await config.applySecurityAuthentication(context);
    return context.getDispatcher();
  }

  it('without it, client-node builds a dispatcher per request (the reason it exists)', async () => {
    const config = tlsConfig();
    expect(await dispatcherOf(config)).not.toBe(await dispatcherOf(config));
  });

  it('hands every request the same dispatcher until it is due for renewal, then a fresh one', async () => {
    let now = 0;
    const config = reuseConnections(tlsConfig(), { refreshMs: 1_000, now: () => now });
    const first = await dispatcherOf(config);
    expect(first).toBeDefined();
    now = 999;
    expect(await dispatcherOf(config)).toBe(first);
    now = 1_000;
    const second = await dispatcherOf(config);
    expect(second).not.toBe(first);
    now = 1_500;
    expect(await dispatcherOf(config)).toBe(second);
    expect(reuseConnections(config)).toBe(config);
  });

  it('closes a replaced dispatcher only a minute later, so a request just handed it still goes out', async () => {
    vi.useFakeTimers();
    try {
      let now = 0;
      const config = reuseConnections(tlsConfig(), { refreshMs: 1_000, now: () => now });
      const first = (await dispatcherOf(config)) as { close: () => Promise<void> };
      const close = vi.spyOn(first, 'close');
      now = 1_000;
      await dispatcherOf(config);
      expect(close).not.toHaveBeenCalled();
      vi.advanceTimersByTime(59_999);
      expect(close).not.toHaveBeenCalled();
      vi.advanceTimersByTime(1);
      expect(close).toHaveBeenCalled();
    } finally {
      vi.useRealTimers();
    }
  });
});
