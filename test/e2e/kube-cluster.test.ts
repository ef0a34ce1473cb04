// Proves the real-API-server fixture behaves like a cluster in the ways the bridge depends on:
// finalizers hold deletion, RBAC is enforced for ServiceAccount tokens, and data survives an
// API server restart.
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { startKubeCluster, type KubeCluster, type KubectlOptions } from '../../testbed/kube-cluster.ts';

const finalizer = 'image-clone-controller.io/backup';
const namespace = 'fixture-test';

let cluster: KubeCluster;

/** kubectl that fails the test with kubectl's own message on a non-zero exit. */
async function kubectlOk(args: string[], options?: KubectlOptions): Promise<string> {
  const result = await cluster.kubectl(args, options);
  if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

function deployment(name: string): string {
  return JSON.stringify({
    apiVersion: 'apps/v1',
    kind: 'Deployment',
    metadata: { name, namespace, finalizers: [finalizer] },
    spec: {
      replicas: 1,
      selector: { matchLabels: { app: name } },
      template: {
        metadata: { labels: { app: name } },
        spec: { containers: [{ name: 'web', image: 'docker.io/library/nginx:1.27' }] },
      },
    },
  });
}

async function getDeployment(name: string): Promise<{
  metadata: { deletionTimestamp?: string; finalizers?: string[] };
  spec: { template: { spec: { containers: { image: string }[] } } };
} | null> {
  const result = await cluster.kubectl(['get', 'deployment', name, '-n', namespace, '-o', 'json']);
  if (result.code !== 0 && result.stderr.includes('NotFound')) return null;
  if (result.code !== 0) throw new Error(result.stderr);
  return JSON.parse(result.stdout);
}

beforeAll(async () => {
  const started = Date.now();
  cluster = await startKubeCluster();
  console.log(`kube cluster ready at ${cluster.server} in ${Date.now() - started} ms`);
  await kubectlOk(['create', 'namespace', namespace]);
  // A cold first run builds the binaries (scripts/kube-binaries); later runs start in seconds.
}, 30 * 60_000);

afterAll(async () => {
  await cluster?.stop();
});

describe('kube cluster fixture', () => {
  it('serves the system namespaces without a controller manager', async () => {
    const names = (await kubectlOk(['get', 'namespaces', '-o', 'name'])).split('\n');
    expect(names).toEqual(expect.arrayContaining(['namespace/default', 'namespace/kube-system', 'namespace/kube-public']));
  });

  it('keeps a Deployment with a finalizer until the finalizer is removed', async () => {
    await kubectlOk(['apply', '-f', '-'], { input: deployment('held') });
    expect((await getDeployment('held'))?.metadata.finalizers).toEqual([finalizer]);

    await kubectlOk(['delete', 'deployment', 'held', '-n', namespace, '--wait=false']);
    const terminating = await getDeployment('held');
    expect(terminating?.metadata.deletionTimestamp).toEqual(expect.any(String));
    expect(terminating?.metadata.finalizers).toEqual([finalizer]);

    // The `test` op makes the patch apply only to the finalizer list it was computed from.
    const patch = [
      { op: 'test', path: '/metadata/finalizers/0', value: finalizer },
      { op: 'remove', path: '/metadata/finalizers/0' },
    ];
    await kubectlOk(['patch', 'deployment', 'held', '-n', namespace, '--type=json', '-p', JSON.stringify(patch)]);
    expect(await getDeployment('held')).toBeNull();
  });

  it('enforces RBAC for a ServiceAccount token', async () => {
    await kubectlOk(['apply', '-f', '-'], { input: deployment('guarded') });
    await kubectlOk(['create', 'serviceaccount', 'reader', '-n', namespace]);
    await kubectlOk(['create', 'clusterrole', 'deployment-reader', '--verb=get,list', '--resource=deployments.apps']);
    await kubectlOk([
      'create',
      'clusterrolebinding',
      'deployment-reader',
      '--clusterrole=deployment-reader',
      `--serviceaccount=${namespace}:reader`,
    ]);
    const kubeconfig = await cluster.serviceAccountKubeconfig(namespace, 'reader');

    const list = await cluster.kubectl(['get', 'deployments', '-A', '-o', 'name'], { kubeconfig });
    expect(list.stderr).toBe('');
    expect(list.stdout).toContain('deployment.apps/guarded');

    const patch = await cluster.kubectl(
      [
        'patch',
        'deployment',
        'guarded',
        '-n',
        namespace,
        '--type=json',
        '-p',
        JSON.stringify([{ op: 'replace', path: '/spec/template/spec/containers/0/image', value: 'evil:1' }]),
      ],
      { kubeconfig },
    );
    expect(patch.code).not.toBe(0);
    expect(patch.stderr).toMatch(/forbidden/i);
    expect(patch.stderr).toContain(`system:serviceaccount:${namespace}:reader`);
    expect((await getDeployment('guarded'))?.spec.template.spec.containers[0]?.image).toBe('docker.io/library/nginx:1.27');

    const auth = await cluster.kubectl(['auth', 'can-i', 'patch', 'deployments', '-n', namespace], { kubeconfig });
    expect(auth.stdout.trim()).toBe('no');
  });

  it('keeps the data across an API server restart', async () => {
    await kubectlOk(['apply', '-f', '-'], { input: deployment('durable') });
    const started = Date.now();
    await cluster.restartApiServer();
    console.log(`kube-apiserver restarted in ${Date.now() - started} ms`);

    const after = await getDeployment('durable');
    expect(after?.metadata.finalizers).toEqual([finalizer]);
    // And it accepts writes again.
    await kubectlOk(['label', 'deployment', 'durable', '-n', namespace, 'restarted=yes']);
  });

  it('is unreachable while the API server is down after a crash', async () => {
    await cluster.stopApiServer({ abrupt: true });
    try {
      const result = await cluster.kubectl(['get', 'namespaces'], { timeoutMs: 20_000 });
      expect(result.code).not.toBe(0);
      expect(result.stderr).toMatch(/refused/i);
    } finally {
      await cluster.startApiServer();
    }
    expect(await getDeployment('durable')).not.toBeNull();
  });
});
