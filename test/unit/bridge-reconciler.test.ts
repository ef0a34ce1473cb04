import { Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { ImageLedger } from '../../bridge/function/image-ledger.ts';
import { KubeApiError, type WorkloadApi } from '../../bridge/kube/api.ts';
import type { EventSink, EventType, InvolvedObject } from '../../bridge/kube/events.ts';
import { bridgeMetrics, metricValue, type BridgeMetrics } from '../../bridge/metrics.ts';
import type { JsonPatchOperation } from '../../bridge/reconcile/patch.ts';
import { Reconciler, StaleWorkloadError } from '../../bridge/reconcile/reconciler.ts';
import type { CopyOrder } from '../../bridge/function/grants.ts';
import { ORIGINAL_IMAGES_ANNOTATION, FINALIZER, type Workload, type WorkloadKind } from '../../bridge/workload.ts';
import { backupLocation } from '../../functions/contract/index.ts';

const backup = backupLocation('registry.example.com', 'backup');
const DIGEST = `sha256:${'f'.repeat(64)}`;
const NGINX = 'docker.io/library/nginx:1.27';
const NGINX_TARGET = `registry.example.com/backup/docker.io/library/nginx:1.27@${DIGEST}`;

function workload(namespace: string, image: string, finalizers: string[] = [FINALIZER]): Workload {
  return {
    metadata: { name: 'web', namespace, uid: 'uid-1', resourceVersion: '7', finalizers },
    spec: { template: { spec: { containers: [{ name: 'web', image }] } } },
  };
}

class FakeApi implements WorkloadApi {
  readonly kind: WorkloadKind;
  readonly watchPath = '/x';
  stored: Workload | undefined;
  patches: JsonPatchOperation[][] = [];
  reads = 0;
  patchError: unknown;

  constructor(kind: WorkloadKind) {
    this.kind = kind;
  }

  list = async () => ({ items: [] });

  read = async () => {
    this.reads++;
    return this.stored;
  };

  patch = async (_namespace: string, _name: string, operations: readonly JsonPatchOperation[]) => {
    this.patches.push([...operations]);
    if (this.patchError !== undefined) throw this.patchError;
    return this.stored ?? {};
  };
}

let apis: { Deployment: FakeApi; DaemonSet: FakeApi };
let cached: Map<string, Workload>;
let ledger: ImageLedger;
let requests: { key: string; sources: readonly string[] }[];
let orders: CopyOrder[];
let events: { object: InvolvedObject; type: EventType; reason: string; message: string }[];
let metrics: BridgeMetrics;
let logs: Record<string, unknown>[];
let reconciler: Reconciler;

beforeEach(() => {
  apis = { Deployment: new FakeApi('Deployment'), DaemonSet: new FakeApi('DaemonSet') };
  cached = new Map();
  ledger = new ImageLedger();
  requests = [];
  orders = [];
  events = [];
  metrics = bridgeMetrics();
  logs = [];
  const sink: EventSink = { record: (object, type, reason, message) => events.push({ object, type, reason, message }) };
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(chunk, _encoding, done) {
        for (const line of String(chunk).split('\n').filter(Boolean)) logs.push(JSON.parse(line) as Record<string, unknown>);
        done();
      },
    }),
  );
  reconciler = new Reconciler({
    apis,
    cache: { get: (kind, namespace, name) => cached.get(`${kind}/${namespace}/${name}`) },
    decision: { backup, ignoredNamespaces: new Set(['kube-system']), defaultMode: 'pin' },
    ledger,
    cloneClient: {
      request: (key, copies) => {
        const sources = copies.map((copy) => (typeof copy === 'string' ? copy : copy.source));
        orders.push(...copies.filter((copy): copy is CopyOrder => typeof copy !== 'string'));
        requests.push({ key, sources });
        return { sent: sources, recheckInMs: 30_000 };
      },
    },
    events: sink,
    metrics,
    logger,
  });
});

const messages = () => logs.map((line) => line.msg);

describe('reconciler', () => {
  it('asks for the copies a workload needs and looks again when they are due', async () => {
    cached.set('DaemonSet/default/web', workload('default', 'nginx:1.27'));
    const outcome = await reconciler.reconcile('DaemonSet/default/web');
    expect(requests).toEqual([{ key: 'DaemonSet/default/web', sources: [NGINX] }]);
    expect(outcome).toEqual({ requeueAfterMs: 30_000 });
    expect(apis.DaemonSet.patches).toEqual([]);
    expect(logs.find((line) => line.msg === 'DaemonSet reconciler: starting reconciliation')).toMatchObject({
      kind: 'DaemonSet',
      namespace: 'default',
      name: 'web',
      image: 'nginx:1.27',
    });
  });

  it('patches a workload whose backups are known, releases it, and says so in events and logs', async () => {
    ledger.succeed(NGINX, NGINX_TARGET, DIGEST);
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    expect(await reconciler.reconcile('Deployment/default/web')).toEqual({});
    expect(requests).toEqual([]);
    expect(apis.Deployment.patches).toEqual([
      [
        { op: 'test', path: '/spec/template/spec/containers/0/image', value: 'nginx:1.27' },
        { op: 'replace', path: '/spec/template/spec/containers/0/image', value: NGINX_TARGET },
        // What ran before, for a revert or an uninstall.
        { op: 'test', path: '/metadata/resourceVersion', value: '7' },
        { op: 'add', path: '/metadata/annotations', value: { [ORIGINAL_IMAGES_ANNOTATION]: '{"web":"nginx:1.27"}' } },
        { op: 'test', path: '/metadata/finalizers/0', value: FINALIZER },
        { op: 'remove', path: '/metadata/finalizers/0' },
      ],
    ]);
    expect(events.map((event) => [event.type, event.reason])).toEqual([
      ['Normal', 'BackedUp'],
      ['Normal', 'Released'],
    ]);
    expect(events[0]!.object).toMatchObject({ kind: 'Deployment', namespace: 'default', name: 'web', uid: 'uid-1' });
    expect(events[0]!.message).toContain(NGINX_TARGET);
    expect(messages()).toEqual([
      'Deployment reconciler: starting reconciliation',
      'Deployment reconciler: image pointed at its backup',
      'Deployment reconciler: finalizer released',
      'Deployment reconciler: reconciliation successfully finished',
    ]);
    expect(logs[1]).toMatchObject({ image: 'nginx:1.27', target: NGINX_TARGET, digest: DIGEST });
    expect(await metricValue(metrics.patches, { kind: 'Deployment', result: 'applied' })).toBe(1);
  });

  it('turns a refused patch (the object changed) into a retry that reads the object from the API server', async () => {
    ledger.succeed(NGINX, NGINX_TARGET, DIGEST);
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    apis.Deployment.patchError = new KubeApiError(422, 'the server rejected our request');
    await expect(reconciler.reconcile('Deployment/default/web')).rejects.toBeInstanceOf(StaleWorkloadError);
    expect(await metricValue(metrics.patches, { kind: 'Deployment', result: 'conflict' })).toBe(1);
    expect(events).toEqual([]);

    // The cache still holds the old object; the server has the new one (someone changed the image).
    apis.Deployment.patchError = undefined;
    apis.Deployment.stored = workload('default', 'nginx:1.28');
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.reads).toBe(1);
    expect(requests).toEqual([{ key: 'Deployment/default/web', sources: ['docker.io/library/nginx:1.28'] }]);
    expect(apis.Deployment.patches).toHaveLength(1);

    // And back to the cache afterwards.
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.reads).toBe(1);
  });

  it('does not act on the pre-patch object the cache holds until the watch catches up', async () => {
    ledger.succeed(NGINX, NGINX_TARGET, DIGEST);
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.patches).toHaveLength(1);
    // Enqueued again before the watch delivered the patched object: the server is asked instead.
    apis.Deployment.stored = {
      ...workload('default', NGINX_TARGET, []),
      metadata: { ...workload('default', NGINX_TARGET, []).metadata, resourceVersion: '8' },
    };
    expect(await reconciler.reconcile('Deployment/default/web')).toEqual({});
    expect(apis.Deployment.reads).toBe(1);
    expect(apis.Deployment.patches).toHaveLength(1);
    expect(await metricValue(metrics.patches, { kind: 'Deployment', result: 'conflict' })).toBe(0);
    // Once is enough: later reconciles use the cache again.
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.reads).toBe(1);
  });

  it('treats 409 like 422 and other errors as plain failures', async () => {
    ledger.succeed(NGINX, NGINX_TARGET, DIGEST);
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    apis.Deployment.patchError = new KubeApiError(409, 'Conflict');
    await expect(reconciler.reconcile('Deployment/default/web')).rejects.toBeInstanceOf(StaleWorkloadError);
    apis.Deployment.stored = workload('default', 'nginx:1.27');
    apis.Deployment.patchError = new KubeApiError(500, 'Internal');
    const failure = reconciler.reconcile('Deployment/default/web');
    await expect(failure).rejects.toBeInstanceOf(KubeApiError);
    await expect(failure).rejects.not.toBeInstanceOf(StaleWorkloadError);
    expect(await metricValue(metrics.patches, { kind: 'Deployment', result: 'error' })).toBe(1);
  });

  it('is done with a workload that is gone, from the cache or under its patch', async () => {
    expect(await reconciler.reconcile('Deployment/default/missing')).toEqual({});
    ledger.succeed(NGINX, NGINX_TARGET, DIGEST);
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    apis.Deployment.patchError = new KubeApiError(404, 'Not Found');
    expect(await reconciler.reconcile('Deployment/default/web')).toEqual({});
    expect(await metricValue(metrics.patches, { kind: 'Deployment', result: 'gone' })).toBe(1);
    expect(messages()).not.toContain('Deployment reconciler: reconciliation successfully finished');
  });

  it('never writes a kube-system workload, even one carrying the finalizer', async () => {
    for (const finalizers of [[FINALIZER], []]) {
      cached.set('Deployment/kube-system/web', workload('kube-system', 'nginx:1.27', finalizers));
      expect(await reconciler.reconcile('Deployment/kube-system/web')).toEqual({});
    }
    expect(apis.Deployment.patches).toEqual([]);
    expect(requests).toEqual([]);
    expect(events).toEqual([]);
    // The same workload elsewhere is acted on: the rule is kube-system's alone.
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    await reconciler.reconcile('Deployment/default/web');
    expect(requests).toHaveLength(1);
  });

  it('does nothing, quietly, for a workload already backed up', async () => {
    cached.set('Deployment/default/web', workload('default', NGINX_TARGET, []));
    expect(await reconciler.reconcile('Deployment/default/web')).toEqual({});
    expect(apis.Deployment.patches).toEqual([]);
    expect(requests).toEqual([]);
    expect(logs.filter((line) => (line.level as number) >= 30)).toEqual([]);
  });

  it('warns about an image reference nobody can pull, and lets the rest proceed', async () => {
    cached.set('Deployment/default/web', workload('default', 'Not::Valid'));
    expect(await reconciler.reconcile('Deployment/default/web')).toEqual({});
    expect(requests).toEqual([]);
    expect(events.map((event) => [event.type, event.reason])).toEqual([
      ['Warning', 'InvalidImage'],
      ['Normal', 'Released'],
    ]);
    // Nothing to wait for: the finalizer is released.
    expect(apis.Deployment.patches).toEqual([
      [
        { op: 'test', path: '/metadata/finalizers/0', value: FINALIZER },
        { op: 'remove', path: '/metadata/finalizers/0' },
      ],
    ]);
  });

  it('ignores keys that are not workload keys, and kinds not watched', async () => {
    expect(await reconciler.reconcile('ReplicaSet/default/x')).toEqual({});
    expect(await reconciler.reconcile('Pod/default/x')).toEqual({});
  });
});

describe("reconciler: a workload's own credentials", () => {
  const PRIVATE = 'registry.example.org/team-a/app:1';
  const teamA = { username: 'team-a', password: 'pull-secret-of-team-a' };
  /** Pull secrets as a fake: which Secrets each namespace's workloads name, and what they unlock. */
  const withPullSecrets = (options: { credentialsWithheld?: string } = {}) => {
    const lookups: string[] = [];
    const reconcilerWithSecrets = new Reconciler({
      apis,
      cache: { get: (kind, namespace, name) => cached.get(`${kind}/${namespace}/${name}`) },
      decision: { backup, ignoredNamespaces: new Set(['kube-system']), defaultMode: 'pin' },
      ledger,
      cloneClient: {
        request: (key, copies) => {
          orders.push(...copies.filter((copy): copy is CopyOrder => typeof copy !== 'string'));
          const sources = copies.map((copy) => (typeof copy === 'string' ? copy : copy.source));
          requests.push({ key, sources });
          return { sent: sources, recheckInMs: 30_000 };
        },
      },
      events: { record: (object, type, reason, message) => events.push({ object, type, reason, message }) },
      metrics,
      logger: pino({ level: 'silent' }),
      pullSecrets: {
        secretNames: async (namespace) => (lookups.push(namespace), namespace === 'team-a' ? ['regcred'] : []),
        grantFor: async (_namespace, names, image) =>
          names.includes('regcred') && image.registry === 'registry.example.org'
            ? { credentials: teamA, secret: 'regcred' }
            : undefined,
      },
      ...options,
    });
    return { reconciler: reconcilerWithSecrets, lookups };
  };
  const put = (namespace: string, image: string) => cached.set(`Deployment/${namespace}/web`, workload(namespace, image));

  it('asks for the copy with the credentials of the pull secret that applies to the registry', async () => {
    const { reconciler: withSecrets } = withPullSecrets();
    put('team-a', PRIVATE);
    await withSecrets.reconcile('Deployment/team-a/web');
    expect(orders).toEqual([
      {
        source: PRIVATE,
        key: expect.stringMatching(/^registry\.example\.org\/team-a\/app:1 \S{22}$/),
        grant: { credentials: teamA, secret: 'regcred', id: expect.any(String) },
      },
    ]);
    // The grant's id names the credentials without them.
    expect(orders[0]!.key).not.toContain(teamA.password);
  });

  it('never points a workload at a copy made with credentials it does not hold', async () => {
    const { reconciler: withSecrets } = withPullSecrets();
    put('team-a', PRIVATE);
    await withSecrets.reconcile('Deployment/team-a/web');
    // Team A's copy succeeded…
    ledger.succeed(orders[0]!.key, `registry.example.com/backup/registry.example.org/team-a/app:1@${DIGEST}`, DIGEST);
    // …team B, without the secret, still needs its own copy (which the source will refuse it).
    put('team-b', PRIVATE);
    await withSecrets.reconcile('Deployment/team-b/web');
    expect(requests.at(-1)).toEqual({ key: 'Deployment/team-b/web', sources: [PRIVATE] });
    expect(apis.Deployment.patches).toEqual([]);
    // Team A is pinned to its copy.
    await withSecrets.reconcile('Deployment/team-a/web');
    expect(apis.Deployment.patches).toHaveLength(1);
  });

  it('uses a copy made without credentials for everyone: the image is public, or the nodes pull it alike', async () => {
    const { reconciler: withSecrets } = withPullSecrets();
    ledger.succeed(PRIVATE, `registry.example.com/backup/registry.example.org/team-a/app:1@${DIGEST}`, DIGEST);
    put('team-a', PRIVATE);
    await withSecrets.reconcile('Deployment/team-a/web');
    expect(requests).toEqual([]);
    expect(apis.Deployment.patches).toHaveLength(1);
  });

  it('withholds credentials the function would receive over plain HTTP outside the cluster, and says so', async () => {
    const { reconciler: withSecrets } = withPullSecrets({
      credentialsWithheld: 'FUNCTION_URL (clone.example.com) is plain HTTP outside the cluster',
    });
    put('team-a', PRIVATE);
    await withSecrets.reconcile('Deployment/team-a/web');
    expect(orders).toEqual([{ source: PRIVATE, key: PRIVATE }]);
    expect(requests).toEqual([{ key: 'Deployment/team-a/web', sources: [PRIVATE] }]);
    expect(events.map((event) => [event.type, event.reason])).toEqual([['Warning', 'CredentialsWithheld']]);
    expect(events[0]!.message).toContain('imagePullSecret "regcred"');
    expect(events[0]!.message).not.toContain(teamA.password);
  });

  it('reads no pull secret for a workload that runs from the backup already, nor in kube-system', async () => {
    const { reconciler: withSecrets, lookups } = withPullSecrets();
    put('team-a', NGINX_TARGET);
    put('kube-system', PRIVATE);
    await withSecrets.reconcile('Deployment/team-a/web');
    await withSecrets.reconcile('Deployment/kube-system/web');
    expect(lookups).toEqual([]);
  });
});

describe('reconciler: a way out for a workload whose image is gone', () => {
  const deleting = (image: string): Workload => ({
    ...workload('default', image),
    metadata: { ...workload('default', image).metadata, deletionTimestamp: '2026-12-07T10:00:00Z' },
  });

  it('releases a workload being deleted once the source says its image is gone, with a Warning', async () => {
    cached.set('Deployment/default/web', deleting('nginx:1.27'));
    await reconciler.reconcile('Deployment/default/web');
    expect(requests).toHaveLength(1);
    expect(apis.Deployment.patches).toEqual([]);
    // A transient failure keeps it.
    ledger.fail(NGINX, 'HTTP 503');
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.patches).toEqual([]);
    // The source says the image is gone: nothing is left to protect.
    ledger.fail(NGINX, 'docker.io/library/nginx:1.27 not found', 'source_not_found');
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.patches).toEqual([
      [
        { op: 'test', path: '/metadata/finalizers/0', value: FINALIZER },
        { op: 'remove', path: '/metadata/finalizers/0' },
      ],
    ]);
    expect(events.at(-1)).toMatchObject({ type: 'Warning', reason: 'Released' });
    expect(events.at(-1)!.message).toContain('gone at the source');
  });

  it('keeps a workload that is not being deleted, gone image or not', async () => {
    cached.set('Deployment/default/web', workload('default', 'nginx:1.27'));
    ledger.fail(NGINX, 'not found', 'source_not_found');
    await reconciler.reconcile('Deployment/default/web');
    expect(apis.Deployment.patches).toEqual([]);
  });
});
