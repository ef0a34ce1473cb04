import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, type Environment } from '../../bridge/config.ts';
import { bridgeMetrics, metricValue, type QueueState } from '../../bridge/metrics.ts';
import { parseWorkloadKey, workloadKey } from '../../bridge/workload.ts';

const minimal: Environment = {
  KUBECONFIG: '/tmp/kubeconfig',
  FUNCTION_URL: 'http://clone-function:8080/',
  AUTH_TOKEN: 'token-0123456789abcdef',
  CALLBACK_SECRET: 'secret-0123456789abcdef',
  BACKUP_NAMESPACE: 'backupacct',
};

function error(env: Environment, sources = {}): string {
  try {
    loadConfig(env, sources);
  } catch (thrown) {
    expect(thrown).toBeInstanceOf(ConfigError);
    return (thrown as Error).message;
  }
  throw new Error('expected a configuration error');
}

describe('bridge configuration', () => {
  it('has defaults for everything but the function, its secrets and the backup namespace', () => {
    const config = loadConfig(minimal);
    expect(config).toMatchObject({
      kubeconfig: '/tmp/kubeconfig',
      functionUrl: 'http://clone-function:8080',
      callbackUrl: undefined,
      backup: { registry: 'docker.io', namespace: 'backupacct', layout: 'flat' },
      port: 8080,
      workers: 4,
      resyncSeconds: 300,
      cloneTimeoutSeconds: 1800,
      leaderElection: { enabled: false },
      logLevel: 'info',
    });
    expect([...config.ignoredNamespaces]).toEqual(['kube-system']);
  });

  it('calls a function outside the cluster synchronously when its CALLBACK_URL is a cluster Service it cannot reach', () => {
    const inCluster = 'http://image-cloner.image-clone-controller.svc:8080/callback';
    const mode = (functionUrl: string, callbackUrl = inCluster) => {
      const config = loadConfig({ ...minimal, FUNCTION_URL: functionUrl, CALLBACK_URL: callbackUrl });
      return config.callbackUrl === undefined ? `synchronous: ${config.callbackUnused}` : 'callback';
    };
    // In the cluster, however it is named: callbacks as configured.
    for (const functionUrl of [
      'http://clone-function.image-clone-controller.svc:8080',
      'https://clone-function.image-clone-controller.svc.cluster.local',
      'http://clone-function:8080',
      'http://clone-function.image-clone-controller:8080',
      'https://10.96.12.7:8443',
      'https://[fd00::1]:8443',
    ]) {
      expect(mode(functionUrl), functionUrl).toBe('callback');
    }
    // A Worker (or any public HTTPS name) cannot resolve a .svc name: only FUNCTION_URL changes.
    expect(mode('https://image-clone.example-account.workers.dev')).toBe(
      'synchronous: the function at image-clone.example-account.workers.dev is outside the cluster and cannot reach ' +
        'image-cloner.image-clone-controller.svc:8080, a cluster Service: calling it synchronously',
    );
    expect(mode('https://clone.example.com/')).toMatch(/^synchronous/);
    // A callback the Worker can reach (an Ingress) is still used.
    expect(mode('https://image-clone.example-account.workers.dev', 'https://controller.example.com/callback')).toBe('callback');
  });

  it('names every missing variable at once, without echoing secrets', () => {
    const message = error({ KUBECONFIG: '/k', AUTH_TOKEN: 'short-secret-value'.slice(0, 10) });
    expect(message).toContain('FUNCTION_URL is required');
    expect(message).toContain('AUTH_TOKEN must be at least 16 characters');
    expect(message).toContain('CALLBACK_SECRET is required');
    expect(message).toContain('BACKUP_NAMESPACE is required');
    expect(message).not.toContain('short-secr');
  });

  it.each([
    [{ FUNCTION_URL: 'ftp://x' }, 'FUNCTION_URL must be an http(s) URL'],
    [{ FUNCTION_URL: 'http://user:pass@x' }, 'FUNCTION_URL must not carry credentials'],
    [{ CALLBACK_URL: 'not a url' }, 'CALLBACK_URL must be an http(s) URL'],
    [{ PORT: '0' }, 'PORT must be an integer from 1 to 65535'],
    [{ WORKERS: '2.5' }, 'WORKERS must be an integer'],
    [{ RESYNC_SECONDS: '1' }, 'RESYNC_SECONDS must be an integer from 10'],
    [{ MAX_IMAGES_PER_REQUEST: '0' }, 'MAX_IMAGES_PER_REQUEST must be an integer from 1'],
    [{ BACKUP_LAYOUT: 'deep' }, 'BACKUP_LAYOUT must be flat or nested'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL must be one of'],
    [{ LEADER_ELECTION: 'maybe' }, 'LEADER_ELECTION must be true or false'],
    [{ IGNORE_NAMESPACES: 'ok,Not_OK' }, 'IGNORE_NAMESPACES "Not_OK" is not a namespace name'],
    [{ BACKUP_NAMESPACE: 'Upper' }, 'BACKUP_NAMESPACE: invalid backup namespace'],
    [{ ECR_REGION: 'mars' }, 'ECR_REGION must be an AWS region'],
  ])('refuses %j', (override, expected) => {
    expect(error({ ...minimal, ...override })).toContain(expected);
  });

  it("splits requests at the function's MAX_IMAGES_PER_REQUEST, read from the same ConfigMap key", () => {
    expect(loadConfig(minimal).maxImagesPerRequest).toBe(50);
    expect(loadConfig({ ...minimal, MAX_IMAGES_PER_REQUEST: '10' }).maxImagesPerRequest).toBe(10);
  });

  it('always ignores kube-system, plus the listed namespaces', () => {
    const config = loadConfig({ ...minimal, IGNORE_NAMESPACES: ' monitoring, , team-a ' });
    expect([...config.ignoredNamespaces].sort()).toEqual(['kube-system', 'monitoring', 'team-a']);
  });

  it('treats blank values (an empty ConfigMap key) as unset', () => {
    const config = loadConfig({ ...minimal, CALLBACK_URL: '', PORT: ' ', BACKUP_LAYOUT: '' });
    expect(config.callbackUrl).toBeUndefined();
    expect(config.port).toBe(8080);
  });

  it('computes the backup location exactly as the function does (layout, ECR grammar)', () => {
    expect(
      loadConfig({ ...minimal, BACKUP_REGISTRY: 'registry.example.com:5000', BACKUP_NAMESPACE: 'a/b' }).backup,
    ).toMatchObject({ layout: 'nested', singleSeparators: false });
    expect(loadConfig({ ...minimal, BACKUP_REGISTRY: '127.0.0.1:5000', BACKUP_LAYOUT: 'flat' }).backup.layout).toBe('flat');
    expect(
      loadConfig({ ...minimal, BACKUP_REGISTRY: '123456789012.dkr.ecr.eu-west-1.amazonaws.com' }).backup.singleSeparators,
    ).toBe(true);
    expect(loadConfig({ ...minimal, BACKUP_REGISTRY: '127.0.0.1:5000', ECR_REGION: 'eu-west-1' }).backup.singleSeparators).toBe(
      true,
    );
  });

  it('runs in-cluster without KUBECONFIG, with leader election on by default', () => {
    const env = { ...minimal, KUBECONFIG: undefined, KUBERNETES_SERVICE_HOST: '10.0.0.1', POD_NAME: 'bridge-abc' };
    const config = loadConfig(env, { readNamespaceFile: () => 'image-clone-controller' });
    expect(config.kubeconfig).toBeUndefined();
    expect(config.leaderElection).toEqual({
      enabled: true,
      namespace: 'image-clone-controller',
      identity: 'bridge-abc',
      leaseName: 'image-clone-controller',
    });
    expect(loadConfig({ ...env, LEADER_ELECTION: 'false' }).leaderElection.enabled).toBe(false);
  });

  it('needs a namespace for the lease and a kubeconfig outside a cluster', () => {
    expect(error({ ...minimal, LEADER_ELECTION: 'true' }, { readNamespaceFile: () => undefined })).toContain(
      'POD_NAMESPACE is required',
    );
    const outside = loadConfig({ ...minimal, LEADER_ELECTION: 'true', POD_NAMESPACE: 'ns' }, { hostname: () => 'host-1' });
    expect(outside.leaderElection).toMatchObject({ enabled: true, namespace: 'ns', identity: 'host-1' });
    expect(error({ ...minimal, KUBECONFIG: undefined })).toContain('KUBECONFIG is required outside a cluster');
  });
});

describe('workload keys', () => {
  it('round-trip and reject anything else', () => {
    expect(parseWorkloadKey(workloadKey({ kind: 'DaemonSet', namespace: 'ns', name: 'agent' }))).toEqual({
      kind: 'DaemonSet',
      namespace: 'ns',
      name: 'agent',
    });
    for (const key of ['ReplicaSet/ns/x', 'Deployment/ns', 'Deployment//x', 'Deployment/ns/x/y', ''])
      expect(parseWorkloadKey(key)).toBeUndefined();
  });
});

describe('bridge metrics', () => {
  it('declares every metric the README promises, with its labels, and the process metrics', async () => {
    const metrics = bridgeMetrics();
    metrics.reconciles.inc({ kind: 'Deployment', result: 'done' });
    metrics.reconcileDuration.observe({ kind: 'Deployment' }, 0.02);
    metrics.cloneLatency.observe({ status: 'copied' }, 3);
    metrics.watchRestarts.inc({ kind: 'DaemonSet', reason: 'silent' });
    const text = await metrics.registry.metrics();
    for (const [name, type] of [
      ['queue_depth', 'gauge'],
      ['queue_delayed', 'gauge'],
      ['queue_processing', 'gauge'],
      ['reconciles_total', 'counter'],
      ['reconcile_duration_seconds', 'histogram'],
      ['patches_total', 'counter'],
      ['clone_requests_total', 'counter'],
      ['image_results_total', 'counter'],
      ['clone_latency_seconds', 'histogram'],
      ['callback_rejections_total', 'counter'],
      ['watch_restarts_total', 'counter'],
      ['informer_synced', 'gauge'],
      ['leader', 'gauge'],
      ['events_dropped_total', 'counter'],
      ['process_resident_memory_bytes', 'gauge'],
      ['nodejs_eventloop_lag_seconds', 'gauge'],
    ]) {
      expect(text).toContain(`# TYPE image_clone_bridge_${name} ${type}\n`);
    }
    expect(text).toContain('image_clone_bridge_reconciles_total{kind="Deployment",result="done"} 1\n');
    expect(text).toContain('image_clone_bridge_reconcile_duration_seconds_count{kind="Deployment"} 1\n');
    expect(text).toContain('image_clone_bridge_clone_latency_seconds_bucket{le="5",status="copied"} 1\n');
    expect(text).toContain('image_clone_bridge_watch_restarts_total{kind="DaemonSet",reason="silent"} 1\n');
  });

  it('reads the queue gauges from the queue when scraped, and 0 while there is none', async () => {
    let queue: QueueState | undefined = { depth: 7, delayed: 2, processing: 4 };
    const metrics = bridgeMetrics({ queue: () => queue });
    expect(await metricValue(metrics.queueDepth)).toBe(7);
    expect(await metricValue(metrics.queueDelayed)).toBe(2);
    expect(await metricValue(metrics.queueProcessing)).toBe(4);
    queue = undefined;
    expect(await metrics.registry.metrics()).toContain('image_clone_bridge_queue_depth 0\n');
  });
});
