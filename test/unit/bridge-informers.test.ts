import { KubeConfig, type KubernetesObject, type makeInformer } from '@kubernetes/client-node';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { WorkloadApi } from '../../bridge/kube/api.ts';
import { WorkloadInformer } from '../../bridge/kube/informers.ts';
import { slimWorkload } from '../../bridge/kube/workload-cache.ts';
import { bridgeMetrics, metricValue, type BridgeMetrics } from '../../bridge/metrics.ts';
import type { Workload } from '../../bridge/workload.ts';

type Callback = (argument?: unknown) => void;

/**
 * Behaves like client-node 2.x's ListWatch where it matters here: start() resolves after the list
 * (with "error" emitted first when the list or the watch failed), and after an error it stays
 * stopped until started again.
 */
class FakeInformer {
  readonly callbacks = new Map<string, Callback[]>();
  readonly objects = new Map<string, KubernetesObject>();
  starts = 0;
  stopped = false;
  /** What the next start() does. */
  nextStart: 'sync' | 'fail' | 'hang' = 'sync';

  on(verb: string, callback: Callback): void {
    this.callbacks.set(verb, [...(this.callbacks.get(verb) ?? []), callback]);
  }

  off(verb: string, callback: Callback): void {
    this.callbacks.set(
      verb,
      (this.callbacks.get(verb) ?? []).filter((existing) => existing !== callback),
    );
  }

  emit(verb: string, argument?: unknown): void {
    for (const callback of this.callbacks.get(verb) ?? []) callback(argument);
  }

  async start(): Promise<void> {
    this.starts++;
    this.stopped = false;
    this.emit('connect');
    if (this.nextStart === 'hang') return new Promise(() => {});
    if (this.nextStart === 'fail') this.emit('error', Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' }));
  }

  async stop(): Promise<void> {
    this.stopped = true;
    // client-node reports its own abort as an error.
    this.emit('error', Object.assign(new Error('This operation was aborted'), { name: 'AbortError' }));
  }

  get(name: string, namespace?: string): KubernetesObject | undefined {
    return this.objects.get(`${namespace}/${name}`);
  }

  list(): KubernetesObject[] {
    return [...this.objects.values()];
  }
}

const api: WorkloadApi = {
  kind: 'Deployment',
  watchPath: '/apis/apps/v1/deployments',
  list: async () => ({ items: [] }),
  read: async () => undefined,
  patch: async () => ({}),
};

let created: FakeInformer[];
let next: Partial<Pick<FakeInformer, 'nextStart'>>;
let changes: { name: string | undefined; change: string }[];
let metrics: BridgeMetrics;
let informer: WorkloadInformer;

beforeEach(() => {
  vi.useFakeTimers();
  created = [];
  next = {};
  changes = [];
  metrics = bridgeMetrics();
  const make = (() => {
    const fake = new FakeInformer();
    Object.assign(fake, next);
    created.push(fake);
    return fake;
  }) as unknown as typeof makeInformer;
  informer = new WorkloadInformer({
    kubeConfig: new KubeConfig(),
    collection: { ...api, project: (object) => slimWorkload('Deployment', object) },
    logger: pino({ level: 'silent' }),
    metrics,
    onChange: (workload: Workload, change) => changes.push({ name: workload.metadata?.name ?? undefined, change }),
    watchdogMs: 10_000,
    restartBaseMs: 1_000,
    restartMaxMs: 4_000,
    makeInformer: make,
  });
});

afterEach(async () => {
  await informer.stop();
  vi.restoreAllMocks();
  vi.useRealTimers();
});

const restarts = (reason: string) => metricValue(metrics.watchRestarts, { kind: 'Deployment', reason });

describe('workload informer', () => {
  it('is synced once the first list is in, and forwards changes', async () => {
    await informer.start();
    expect(informer.synced).toBe(true);
    expect(await metricValue(metrics.informerSynced, { kind: 'Deployment' })).toBe(1);
    const object = { metadata: { name: 'web', namespace: 'default' } };
    created[0]!.objects.set('default/web', object);
    created[0]!.emit('add', object);
    created[0]!.emit('update', object);
    created[0]!.emit('delete', object);
    expect(changes).toEqual([
      { name: 'web', change: 'add' },
      { name: 'web', change: 'update' },
      { name: 'web', change: 'delete' },
    ]);
    expect(informer.get('default', 'web')).toBe(object);
  });

  it('restarts a watch that failed (client-node stops for good on such errors), with growing backoff', async () => {
    await informer.start();
    const watch = created[0]!;
    watch.nextStart = 'fail';
    vi.spyOn(Math, 'random').mockReturnValue(0.999_999);
    watch.emit('error', Object.assign(new Error('terminated'), { name: 'TypeError' }));
    expect(informer.synced).toBe(false);
    expect(await restarts('error')).toBe(1);

    // Backoff with jitter, here at its longest: 1 s, 2 s, then 4 s (the cap).
    await vi.advanceTimersByTimeAsync(999);
    expect(watch.starts).toBe(1);
    await vi.advanceTimersByTimeAsync(1);
    expect(watch.starts).toBe(2);
    expect(await restarts('error')).toBe(2);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(watch.starts).toBe(3);
    await vi.advanceTimersByTimeAsync(4_000);
    expect(watch.starts).toBe(4);
    await vi.advanceTimersByTimeAsync(4_000);
    expect(watch.starts).toBe(5);

    // Restarted on the same informer: its cache and resourceVersion survive.
    watch.nextStart = 'sync';
    await vi.advanceTimersByTimeAsync(4_000);
    expect(watch.starts).toBe(6);
    expect(created).toHaveLength(1);
    expect(informer.synced).toBe(true);

    // A success resets the backoff.
    watch.nextStart = 'fail';
    watch.emit('error', new Error('again'));
    await vi.advanceTimersByTimeAsync(1_000);
    expect(watch.starts).toBe(7);
  });

  it('replaces an informer that shows no sign of life for too long, and ignores the old one', async () => {
    await informer.start();
    const old = created[0]!;
    await vi.advanceTimersByTimeAsync(9_000);
    old.emit('connect');
    await vi.advanceTimersByTimeAsync(9_000);
    expect(created).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(3_000);
    expect(await restarts('silent')).toBe(1);
    expect(created).toHaveLength(2);
    expect(old.stopped).toBe(true);
    // The old informer's abort "error" and late events change nothing.
    expect(await restarts('error')).toBe(0);
    old.emit('add', { metadata: { name: 'ghost', namespace: 'default' } });
    expect(changes).toEqual([]);
    expect(informer.synced).toBe(true);
    created[1]!.emit('add', { metadata: { name: 'web', namespace: 'default' } });
    expect(changes).toEqual([{ name: 'web', change: 'add' }]);
  });

  it('replaces an informer whose start hangs (a list that never answers)', async () => {
    next = { nextStart: 'hang' };
    void informer.start();
    await vi.advanceTimersByTimeAsync(12_500);
    expect(informer.synced).toBe(false);
    expect(await restarts('silent')).toBe(1);
    next = {};
    created[1]!.nextStart = 'sync';
    await vi.advanceTimersByTimeAsync(12_500);
    expect(created.length).toBeGreaterThanOrEqual(3);
    expect(informer.synced).toBe(true);
  });

  it('does not restart anything once stopped', async () => {
    await informer.start();
    await informer.stop();
    expect(informer.synced).toBe(false);
    created[0]!.emit('error', new Error('late'));
    await vi.advanceTimersByTimeAsync(60_000);
    expect(created).toHaveLength(1);
    expect(created[0]!.starts).toBe(1);
    expect((await restarts('error')) + (await restarts('silent'))).toBe(0);
  });
});
