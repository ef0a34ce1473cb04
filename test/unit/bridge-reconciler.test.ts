import { Writable } from 'node:stream';
import { pino } from 'pino';
import { beforeEach, describe, expect, it } from 'vitest';
import { ImageLedger } from '../../bridge/function/image-ledger.ts';
import { KubeApiError, type WorkloadApi } from '../../bridge/kube/api.ts';
import type { EventSink, EventType, InvolvedObject } from '../../bridge/kube/events.ts';
import { bridgeMetrics, metricValue, type BridgeMetrics } from '../../bridge/metrics.ts';
import type { JsonPatchOperation } from '../../bridge/reconcile/patch.ts';
import { Reconciler, StaleWorkloadError } from '../../bridge/reconcile/reconciler.ts';
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
let events: { object: InvolvedObject; type: EventType; reason: string; message: string }[];
let metrics: BridgeMetrics;
let logs: Record<string, unknown>[];
let reconciler: Reconciler;

beforeEach(() => {
  apis = { Deployment: new FakeApi('Deployment'), DaemonSet: new FakeApi('DaemonSet') };
  cached = new Map();
  ledger = new ImageLedger();
  requests = [];
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
      request: (key, sources) => {
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

  it('ignores keys that are not workload keys', async () => {
    expect(await reconciler.reconcile('Pod/default/x')).toEqual({});
  });
});
