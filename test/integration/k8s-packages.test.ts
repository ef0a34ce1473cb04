// The ways to install the controller, checked against a real kube-apiserver: the Helm chart
// (k8s/chart) for the value combinations that change what is rendered, kustomize (`kubectl apply -k
// k8s`), and the admission guardrails' allowance for the leader label, by impersonating the
// bridge's ServiceAccount. Rendered objects are applied with a server-side dry run, so the API
// server validates them (strict field validation: an unknown field is an error) and admission
// runs; the guardrail checks write for real. A Helm install that runs end to end is
// test/e2e/helm.test.ts.

import { loadYaml } from '@kubernetes/client-node';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CHART_DIR, helmRunner, manifestsOf, type Helm, type KubeObject } from '../../testbed/helm.ts';
import { startKubeCluster, type KubeCluster } from '../../testbed/kube-cluster.ts';
import { REPO_ROOT } from '../../testbed/processes.ts';

const NAMESPACE = 'image-clone-controller';
const VERSION = (JSON.parse(await readFile(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string }).version;
const LEADER_LABEL = 'image-clone-controller.io/leader';

let cluster: KubeCluster;
let helm: Helm;

async function kubectl(args: readonly string[], input?: string): Promise<string> {
  const result = await cluster.kubectl(args, input === undefined ? {} : { input });
  if (result.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** Applies manifests with a server-side dry run; returns the objects as the API server would store them. */
async function dryRun(manifests: string): Promise<KubeObject[]> {
  const output = await kubectl(['apply', '--dry-run=server', '--validate=strict', '-o', 'json', '-f', '-'], manifests);
  const parsed = JSON.parse(output) as KubeObject | { kind: 'List'; items: KubeObject[] };
  return parsed.kind === 'List' ? (parsed as { items: KubeObject[] }).items : [parsed as KubeObject];
}

/** Every combination of values a test rendered, for the check that Helm 3 renders them alike. */
const rendered: { values: readonly string[]; release: string; namespace: string }[] = [];

async function template(values: readonly string[], release = 'image-clone-controller', namespace = NAMESPACE) {
  const result = await helm(['template', release, CHART_DIR, '--namespace', namespace, ...values]);
  if (result.code === 0) rendered.push({ values, release, namespace });
  return result;
}

/** helm template, failing the test with helm's message. */
async function render(values: readonly string[], release?: string, namespace?: string): Promise<string> {
  const result = await template(values, release, namespace);
  if (result.code !== 0) throw new Error(`helm template failed: ${result.stderr}`);
  return result.stdout;
}

const find = (objects: readonly KubeObject[], kind: string, name?: string) =>
  objects.filter((object) => object.kind === kind && (name === undefined || object.metadata.name === name));

function one(objects: readonly KubeObject[], kind: string, name?: string): KubeObject {
  const found = find(objects, kind, name);
  if (found.length !== 1) throw new Error(`expected one ${kind}${name ? ` ${name}` : ''}, found ${found.length}`);
  return found[0]!;
}

interface Container {
  name: string;
  image: string;
  command?: string[];
  env?: { name: string; value?: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[];
  envFrom?: { configMapRef?: { name: string } }[];
  volumeMounts?: { name: string; mountPath: string }[];
}
interface PodSpec {
  serviceAccountName?: string;
  containers: Container[];
  volumes?: { name: string; secret?: { secretName: string } }[];
}
const podSpecOf = (deployment: KubeObject) =>
  (deployment as unknown as { spec: { template: { spec: PodSpec } } }).spec.template.spec;
const dataOf = (configMap: KubeObject) => (configMap as unknown as { data: Record<string, string> }).data;
const rulesOf = (role: KubeObject) =>
  (role as unknown as { rules: { apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }[] }).rules;
const specOf = <T>(object: KubeObject) => (object as unknown as { spec: T }).spec;

/**
 * The Prometheus operator's two resources the chart renders, as CRDs whose schemas name the fields
 * the chart uses (and a few more), so the dry run refuses a misspelt one. Not the operator's own
 * CRDs (it is not installed here); enough to tell a typo from a field.
 */
function monitoringCrds(): string {
  const labels = { type: 'object', additionalProperties: { type: 'string' } };
  const labelSelector = {
    type: 'object',
    properties: {
      matchLabels: labels,
      matchExpressions: {
        type: 'array',
        items: {
          type: 'object',
          required: ['key', 'operator'],
          properties: {
            key: { type: 'string' },
            operator: { type: 'string' },
            values: { type: 'array', items: { type: 'string' } },
          },
        },
      },
    },
  };
  const crd = (kind: string, plural: string, spec: object) => ({
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.monitoring.coreos.com` },
    spec: {
      group: 'monitoring.coreos.com',
      scope: 'Namespaced',
      names: { kind, plural, singular: kind.toLowerCase(), listKind: `${kind}List` },
      versions: [
        {
          name: 'v1',
          served: true,
          storage: true,
          schema: { openAPIV3Schema: { type: 'object', properties: { spec: { type: 'object', ...spec } } } },
        },
      ],
    },
  });
  const serviceMonitor = crd('ServiceMonitor', 'servicemonitors', {
    required: ['selector', 'endpoints'],
    properties: {
      selector: labelSelector,
      namespaceSelector: {
        type: 'object',
        properties: { any: { type: 'boolean' }, matchNames: { type: 'array', items: { type: 'string' } } },
      },
      jobLabel: { type: 'string' },
      targetLabels: { type: 'array', items: { type: 'string' } },
      endpoints: {
        type: 'array',
        items: {
          type: 'object',
          properties: {
            port: { type: 'string' },
            path: { type: 'string' },
            scheme: { type: 'string' },
            interval: {
              type: 'string',
              pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$',
            },
            scrapeTimeout: { type: 'string' },
            honorLabels: { type: 'boolean' },
          },
        },
      },
    },
  });
  const prometheusRule = crd('PrometheusRule', 'prometheusrules', {
    properties: {
      groups: {
        type: 'array',
        items: {
          type: 'object',
          required: ['name'],
          properties: {
            name: { type: 'string', minLength: 1 },
            interval: { type: 'string' },
            rules: {
              type: 'array',
              items: {
                type: 'object',
                required: ['expr'],
                properties: {
                  alert: { type: 'string' },
                  record: { type: 'string' },
                  expr: { 'x-kubernetes-int-or-string': true },
                  for: {
                    type: 'string',
                    pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$',
                  },
                  keep_firing_for: { type: 'string' },
                  labels,
                  annotations: labels,
                },
              },
            },
          },
        },
      },
    },
  });
  return [serviceMonitor, prometheusRule].map((object) => JSON.stringify(object)).join('\n');
}

beforeAll(async () => {
  cluster = await startKubeCluster();
  helm = await helmRunner(join(cluster.dir, 'helm'));
  await kubectl(['create', 'namespace', NAMESPACE]);
  for (const namespace of ['monitoring', 'tenant-ops']) await kubectl(['create', 'namespace', namespace]);
  await kubectl(['apply', '-f', '-'], monitoringCrds());
  await kubectl([
    'wait',
    '--for=condition=Established',
    'crd/servicemonitors.monitoring.coreos.com',
    'crd/prometheusrules.monitoring.coreos.com',
  ]);
}, 180_000);

afterAll(async () => {
  await cluster?.stop();
});

const REQUIRED = ['--set', 'backup.namespace=backupacct'];

describe('the Helm chart', () => {
  it('passes helm lint, strict with the smallest values and plain with the defaults', async () => {
    const strict = await helm(['lint', '--strict', CHART_DIR, '-f', join(CHART_DIR, 'ci/test-values.yaml')]);
    expect(strict.code, strict.stdout + strict.stderr).toBe(0);
    expect(strict.stdout).toContain('0 chart(s) failed');
    expect(strict.stdout).not.toMatch(/\[(ERROR|WARNING)\]/);
    const plain = await helm(['lint', CHART_DIR]);
    expect(plain.code, plain.stdout + plain.stderr).toBe(0);
  });

  it('refuses a typo in the values, naming it, and an unknown kind or mode', async () => {
    const typo = await template([...REQUIRED, '--set', 'bridge.watchKind=Deployment']);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toMatch(/values don't meet the specifications of the schema/);
    expect(typo.stderr).toContain('watchKind');
    const nested = await template([...REQUIRED, '--set', 'function.limits.stallSecond=10']);
    expect(nested.code).not.toBe(0);
    expect(nested.stderr).toContain('stallSecond');
    const kind = await template([...REQUIRED, '--set', 'bridge.watchKinds={Deployment,ReplicaSet}']);
    expect(kind.code).not.toBe(0);
    expect(kind.stderr).toContain('watchKinds');
    const mode = await template([...REQUIRED, '--set', 'bridge.defaultMode=pinned']);
    expect(mode.code).not.toBe(0);
    expect(mode.stderr).toContain('defaultMode');
    // The control: the same command with the right names renders.
    expect(
      (await template([...REQUIRED, '--set', 'bridge.watchKinds={Deployment}', '--set', 'function.limits.stallSeconds=10'])).code,
    ).toBe(0);
  });

  it('says backup.namespace is required', async () => {
    const result = await template([]);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('backup.namespace is required');
  });

  it('with the defaults: the whole system in one ConfigMap, the image at the chart version, every replica served by label', async () => {
    const objects = await dryRun(await render(REQUIRED));
    const config = dataOf(one(objects, 'ConfigMap', 'image-clone-controller-config'));
    expect(config).toEqual({
      BACKUP_REGISTRY: 'docker.io',
      BACKUP_NAMESPACE: 'backupacct',
      LOG_LEVEL: 'info',
      FUNCTION_URL: `http://image-clone-controller-function.${NAMESPACE}.svc:8080`,
      CALLBACK_URL: `http://image-clone-controller-bridge.${NAMESPACE}.svc:8080/callback`,
      WATCH_KINDS: 'Deployment,DaemonSet,StatefulSet,CronJob,Job,Pod',
      DEFAULT_MODE: 'pin',
      IGNORE_NAMESPACES: NAMESPACE,
    });
    const bridge = one(objects, 'Deployment', 'image-clone-controller-bridge');
    const fn = one(objects, 'Deployment', 'image-clone-controller-function');
    for (const deployment of [bridge, fn]) {
      const [container] = podSpecOf(deployment).containers;
      expect(container!.image).toBe(`ghcr.io/image-clone-controller/image-clone-controller:${VERSION}`);
      expect(container!.envFrom).toEqual([{ configMapRef: { name: 'image-clone-controller-config' } }]);
      expect(specOf<{ strategy: unknown }>(deployment).strategy).toEqual({
        type: 'RollingUpdate',
        rollingUpdate: { maxSurge: 1, maxUnavailable: 0 },
      });
    }
    expect(podSpecOf(bridge).containers[0]!.command).toEqual(['node', 'dist/bridge/main.js']);
    expect(podSpecOf(fn).containers[0]!.command).toEqual(['node', 'dist/functions/node.js']);
    expect(podSpecOf(bridge).serviceAccountName).toBe('image-clone-controller-bridge');
    // The generated shared secret, referenced by both.
    const shared = one(objects, 'Secret', 'image-clone-controller-secrets') as unknown as { data: Record<string, string> };
    for (const key of ['AUTH_TOKEN', 'CALLBACK_SECRET'])
      expect(Buffer.from(shared.data[key]!, 'base64').toString()).toMatch(/^[A-Za-z0-9]{48}$/);
    // No credentials given: no registry Secret, no mount (ECR uses the AWS chain).
    expect(find(objects, 'Secret')).toHaveLength(1);
    expect(podSpecOf(fn).containers[0]!.env!.map((variable) => variable.name)).not.toContain('REGISTRY_AUTH_FILE');

    // The callback Service reaches the leader only; the metrics Service every replica.
    const service = specOf<{ selector: Record<string, string> }>(one(objects, 'Service', 'image-clone-controller-bridge'));
    expect(service.selector).toMatchObject({ 'app.kubernetes.io/component': 'bridge', [LEADER_LABEL]: 'true' });
    const metricsService = specOf<{ selector: Record<string, string> }>(
      one(objects, 'Service', 'image-clone-controller-bridge-metrics'),
    );
    expect(metricsService.selector).not.toHaveProperty(LEADER_LABEL);
    const podLabels = (bridge as unknown as { spec: { template: { metadata: { labels: Record<string, string> } } } }).spec
      .template.metadata.labels;
    const { [LEADER_LABEL]: _leader, ...selectorBesideLeader } = service.selector;
    expect(podLabels).toMatchObject(selectorBesideLeader);

    // PodDisruptionBudgets that allow a drain, NetworkPolicies and guardrails on.
    const budgets = find(objects, 'PodDisruptionBudget');
    expect(budgets.map((budget) => [budget.metadata.name, specOf<{ maxUnavailable: number }>(budget).maxUnavailable])).toEqual([
      ['image-clone-controller-bridge', 1],
      ['image-clone-controller-function', 1],
    ]);
    expect(
      find(objects, 'NetworkPolicy')
        .map((policy) => policy.metadata.name)
        .sort(),
    ).toEqual(['image-clone-controller-bridge', 'image-clone-controller-function']);
    expect(
      find(objects, 'ValidatingAdmissionPolicy')
        .map((policy) => policy.metadata.name)
        .sort(),
    ).toEqual(['image-clone-controller-backup-images', 'image-clone-controller-guardrails']);
    // RBAC for all six kinds.
    const resources = rulesOf(one(objects, 'ClusterRole')).flatMap((rule) => rule.resources);
    expect(resources).toEqual(
      expect.arrayContaining(['deployments', 'daemonsets', 'statefulsets', 'cronjobs', 'jobs', 'pods', 'namespaces', 'secrets']),
    );
    // The dashboard, for Grafana's sidecar; no Prometheus-operator objects without being asked
    // and without CRDs in the capabilities helm template assumes.
    const dashboard = one(objects, 'ConfigMap', 'image-clone-controller-dashboard');
    expect(dashboard.metadata.labels).toMatchObject({ grafana_dashboard: '1' });
    expect(JSON.parse(dataOf(dashboard)['image-clone-controller.json']!)).toMatchObject({ uid: 'image-clone-controller' });
    expect(find(objects, 'ServiceMonitor')).toEqual([]);
  });

  it('with a function outside the cluster: FUNCTION_URL is its URL and nothing of the function is rendered', async () => {
    const url = 'https://clone-function.example.workers.dev';
    const objects = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        `function.externalUrl=${url}`,
        '--set',
        'registryCredentials.username=u',
        '--set',
        'registryCredentials.password=p',
      ]),
    );
    const config = dataOf(one(objects, 'ConfigMap', 'image-clone-controller-config'));
    expect(config.FUNCTION_URL).toBe(url);
    expect(config).not.toHaveProperty('CALLBACK_URL');
    expect(find(objects, 'Deployment').map((deployment) => deployment.metadata.name)).toEqual(['image-clone-controller-bridge']);
    expect(
      find(objects, 'Service')
        .map((service) => service.metadata.name)
        .sort(),
    ).toEqual(['image-clone-controller-bridge', 'image-clone-controller-bridge-metrics']);
    expect(find(objects, 'NetworkPolicy').map((policy) => policy.metadata.name)).toEqual(['image-clone-controller-bridge']);
    expect(find(objects, 'PodDisruptionBudget').map((budget) => budget.metadata.name)).toEqual(['image-clone-controller-bridge']);
    // The registry credentials belong to the function (on the Worker, as its secret).
    expect(find(objects, 'Secret').map((secret) => secret.metadata.name)).toEqual(['image-clone-controller-secrets']);

    // An Ingress carrying the Worker's callbacks: CALLBACK_URL, and its controller may reach the bridge.
    const withCallbacks = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        `function.externalUrl=${url}`,
        '--set',
        'bridge.callbackUrl=https://callbacks.example.com/callback',
        '--set-json',
        'networkPolicy.bridgeIngressFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"ingress-nginx"}}}]',
      ]),
    );
    expect(dataOf(one(withCallbacks, 'ConfigMap', 'image-clone-controller-config')).CALLBACK_URL).toBe(
      'https://callbacks.example.com/callback',
    );
    const ingress = specOf<{ ingress: { from: object[] }[] }>(one(withCallbacks, 'NetworkPolicy')).ingress;
    expect(ingress[0]!.from).toEqual([
      { namespaceSelector: { matchLabels: { 'kubernetes.io/metadata.name': 'ingress-nginx' } } },
    ]);
  });

  it('with existing Secrets: none is created, both components read the named ones', async () => {
    const objects = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        'sharedSecret.existingSecret=team-shared',
        '--set',
        'registryCredentials.existingSecret=team-registry',
      ]),
    );
    expect(find(objects, 'Secret')).toEqual([]);
    for (const name of ['image-clone-controller-bridge', 'image-clone-controller-function']) {
      const env = podSpecOf(one(objects, 'Deployment', name)).containers[0]!.env!;
      const references = env.flatMap((variable) => (variable.valueFrom?.secretKeyRef ? [variable.valueFrom.secretKeyRef] : []));
      expect(references).toEqual([
        { name: 'team-shared', key: 'AUTH_TOKEN' },
        { name: 'team-shared', key: 'CALLBACK_SECRET' },
      ]);
    }
    const fn = podSpecOf(one(objects, 'Deployment', 'image-clone-controller-function'));
    expect(fn.volumes).toContainEqual(
      expect.objectContaining({ name: 'registry-credentials', secret: expect.objectContaining({ secretName: 'team-registry' }) }),
    );
    expect(fn.containers[0]!.env).toContainEqual({
      name: 'REGISTRY_AUTH_FILE',
      value: '/etc/image-clone-controller/registry/config.json',
    });
  });

  it('with credentials given: a dockerconfigjson Secret the function mounts', async () => {
    const objects = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        'registryCredentials.username=backup-user',
        '--set',
        'registryCredentials.password=s3cret-token',
        '--set',
        'sharedSecret.authToken=0123456789abcdef0123',
        '--set',
        'sharedSecret.callbackSecret=fedcba9876543210fedc',
      ]),
    );
    const registry = one(objects, 'Secret', 'image-clone-controller-registry') as unknown as {
      type: string;
      data: Record<string, string>;
    };
    expect(registry.type).toBe('kubernetes.io/dockerconfigjson');
    expect(JSON.parse(Buffer.from(registry.data['.dockerconfigjson']!, 'base64').toString())).toEqual({
      auths: { 'https://index.docker.io/v1/': { username: 'backup-user', password: 's3cret-token' } },
    });
    const shared = one(objects, 'Secret', 'image-clone-controller-secrets') as unknown as { data: Record<string, string> };
    expect(Buffer.from(shared.data.AUTH_TOKEN!, 'base64').toString()).toBe('0123456789abcdef0123');
    // Too short a shared secret is refused at render time, as the components would refuse it.
    const short = await template([...REQUIRED, '--set', 'sharedSecret.authToken=short']);
    expect(short.code).not.toBe(0);
  });

  it('with monitoring on: a ServiceMonitor of both components and the PrometheusRule of files/', async () => {
    const objects = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        'monitoring.serviceMonitor.enabled=true',
        '--set',
        'monitoring.serviceMonitor.labels.release=kube-prometheus-stack',
        '--set',
        'monitoring.prometheusRule.enabled=true',
        '--set',
        'monitoring.grafanaDashboard.namespace=monitoring',
      ]),
    );
    const monitor = one(objects, 'ServiceMonitor');
    expect(monitor.metadata.labels).toMatchObject({ release: 'kube-prometheus-stack' });
    const selector = specOf<{ selector: { matchLabels: Record<string, string> } }>(monitor).selector.matchLabels;
    const scraped = find(objects, 'Service').filter((service) =>
      Object.entries(selector).every(([label, value]) => service.metadata.labels?.[label] === value),
    );
    expect(scraped.map((service) => service.metadata.name).sort()).toEqual([
      'image-clone-controller-bridge-metrics',
      'image-clone-controller-function',
    ]);
    const rule = one(objects, 'PrometheusRule');
    const fromFile = loadYaml<{ groups: unknown[] }>(await readFile(join(CHART_DIR, 'files/prometheus-rules.yaml'), 'utf8'));
    expect(specOf<{ groups: unknown[] }>(rule).groups).toEqual(fromFile.groups);
    expect(one(objects, 'ConfigMap', 'image-clone-controller-dashboard').metadata.namespace).toBe('monitoring');
  });

  it('renders the Prometheus-operator objects by itself where the cluster serves monitoring.coreos.com/v1', async () => {
    const kinds = (text: string) => [...text.matchAll(/^kind: (\w+)$/gm)].map((match) => match[1]);
    expect(kinds(await render(REQUIRED))).not.toContain('ServiceMonitor');
    const told = kinds(await render([...REQUIRED, '--api-versions', 'monitoring.coreos.com/v1']));
    expect(told).toEqual(expect.arrayContaining(['ServiceMonitor', 'PrometheusRule']));
    // Against this cluster, which has the CRDs: helm asks it.
    const asked = await helm(
      ['template', 'image-clone-controller', CHART_DIR, '-n', NAMESPACE, ...REQUIRED, '--dry-run=server'],
      {
        kubeconfig: cluster.kubeconfigPath,
      },
    );
    expect(asked.code, asked.stderr).toBe(0);
    expect(kinds(asked.stdout)).toEqual(expect.arrayContaining(['ServiceMonitor', 'PrometheusRule']));
    // And off when asked, whatever the cluster serves.
    expect(
      kinds(
        await render([
          ...REQUIRED,
          '--api-versions',
          'monitoring.coreos.com/v1',
          '--set',
          'monitoring.serviceMonitor.enabled=false',
        ]),
      ),
    ).not.toContain('ServiceMonitor');
  });

  it('with guardrails and NetworkPolicies off, fewer kinds and every function setting: RBAC and settings follow', async () => {
    const objects = await dryRun(
      await render([
        ...REQUIRED,
        '--set',
        'admissionGuardrails.enabled=false',
        '--set',
        'networkPolicy.enabled=false',
        '--set',
        'bridge.watchKinds={Deployment,CronJob}',
        '--set',
        'bridge.defaultMode=backup-only',
        '--set',
        'bridge.ignoreNamespaces={sandbox,image-clone-controller}',
        '--set',
        'bridge.workers=8',
        '--set',
        'bridge.replicas=2',
        '--set',
        'bridge.podDisruptionBudget.minAvailable=1',
        '--set',
        'function.sourceRegistries={docker.io,*.gcr.io}',
        '--set',
        'function.sharedCredentialRegistries={docker.io}',
        '--set',
        'function.callbackOrigins={https://callbacks.example.com}',
        '--set',
        'function.insecureRegistries={registry.local:5000}',
        '--set',
        'function.concurrency.images=2',
        '--set',
        'function.limits.maxManifestBytesPerImage=16777216',
        '--set',
        'function.ecr.scanOnPush=true',
        '--set',
        'function.serviceAccount.create=true',
        '--set',
        'function.serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/cloner',
        '--set',
        'backup.registry=123456789012.dkr.ecr.eu-west-1.amazonaws.com',
        '--set',
        'logLevel=debug',
      ]),
    );
    expect(find(objects, 'ValidatingAdmissionPolicy')).toEqual([]);
    expect(find(objects, 'ValidatingAdmissionPolicyBinding')).toEqual([]);
    expect(find(objects, 'NetworkPolicy')).toEqual([]);
    const rules = rulesOf(one(objects, 'ClusterRole'));
    expect(rules.filter((rule) => rule.verbs.includes('watch')).map((rule) => [rule.apiGroups[0], rule.resources])).toEqual([
      ['apps', ['deployments']],
      ['batch', ['cronjobs']],
      ['', ['namespaces']],
    ]);
    expect(dataOf(one(objects, 'ConfigMap', 'image-clone-controller-config'))).toMatchObject({
      BACKUP_REGISTRY: '123456789012.dkr.ecr.eu-west-1.amazonaws.com',
      WATCH_KINDS: 'Deployment,CronJob',
      DEFAULT_MODE: 'backup-only',
      IGNORE_NAMESPACES: `${NAMESPACE},sandbox`,
      WORKERS: '8',
      SOURCE_REGISTRIES: 'docker.io,*.gcr.io',
      SHARED_CREDENTIAL_REGISTRIES: 'docker.io',
      CALLBACK_ORIGINS: 'https://callbacks.example.com',
      INSECURE_REGISTRIES: 'registry.local:5000',
      IMAGE_CONCURRENCY: '2',
      MAX_MANIFEST_BYTES_PER_IMAGE: '16777216',
      ECR_SCAN_ON_PUSH: 'true',
      LOG_LEVEL: 'debug',
    });
    expect(specOf<{ replicas: number }>(one(objects, 'Deployment', 'image-clone-controller-bridge')).replicas).toBe(2);
    expect(specOf<object>(one(objects, 'PodDisruptionBudget', 'image-clone-controller-bridge'))).toMatchObject({
      minAvailable: 1,
    });
    const account = one(objects, 'ServiceAccount', 'image-clone-controller-function') as unknown as {
      metadata: { annotations: Record<string, string> };
      automountServiceAccountToken: boolean;
    };
    expect(account.metadata.annotations['eks.amazonaws.com/role-arn']).toBe('arn:aws:iam::123456789012:role/cloner');
    expect(account.automountServiceAccountToken).toBe(false);
    expect(podSpecOf(one(objects, 'Deployment', 'image-clone-controller-function')).serviceAccountName).toBe(
      'image-clone-controller-function',
    );
  });

  it("carries k8s/rbac's admission policies, for its own ServiceAccount, namespace and ConfigMap", async () => {
    const objects = await dryRun(await render(REQUIRED, 'icc', 'tenant-ops'));
    const plain = await dryRun(await readFile(join(REPO_ROOT, 'k8s/rbac/06-admission-guardrails.yml'), 'utf8'));
    type PolicySpec = { matchConditions: { name: string; expression: string }[] };
    for (const name of ['guardrails', 'backup-images']) {
      const policy = one(objects, 'ValidatingAdmissionPolicy', `icc-image-clone-controller-${name}`);
      const plainPolicy = one(plain, 'ValidatingAdmissionPolicy', `image-clone-controller-${name}`);
      const chartSpec = JSON.parse(JSON.stringify(specOf<PolicySpec>(policy))) as PolicySpec;
      expect(chartSpec.matchConditions).toEqual([
        {
          name: 'only-the-bridge',
          expression: "request.userInfo.username == 'system:serviceaccount:tenant-ops:icc-image-clone-controller-bridge'",
        },
      ]);
      // The rest of the policy is k8s/rbac's, word for word.
      chartSpec.matchConditions = specOf<PolicySpec>(plainPolicy).matchConditions;
      expect(chartSpec).toEqual(JSON.parse(JSON.stringify(specOf<PolicySpec>(plainPolicy))));
    }
    // The first needs no parameters; the second reads this release's ConfigMap and allows without it.
    const guardrails = one(objects, 'ValidatingAdmissionPolicyBinding', 'icc-image-clone-controller-guardrails');
    expect(specOf<object>(guardrails)).toMatchObject({
      policyName: 'icc-image-clone-controller-guardrails',
      validationActions: ['Deny'],
    });
    expect(specOf<object>(guardrails)).not.toHaveProperty('paramRef');
    const backupImages = one(objects, 'ValidatingAdmissionPolicyBinding', 'icc-image-clone-controller-backup-images');
    expect(specOf<object>(backupImages)).toMatchObject({
      policyName: 'icc-image-clone-controller-backup-images',
      paramRef: { name: 'icc-image-clone-controller-config', namespace: 'tenant-ops', parameterNotFoundAction: 'Allow' },
    });
  });

  // Last in this block: it renders again what the tests above rendered (vitest runs them in order).
  it('renders with Helm 3 what Helm 4 renders, for every combination above; Helm 3 lints it and refuses a typo alike', async () => {
    const helm3 = await helmRunner(join(cluster.dir, 'helm3'), 3);
    expect((await helm3(['version', '--short'])).stdout).toMatch(/^v3\./);
    const lint = await helm3(['lint', '--strict', CHART_DIR, '-f', join(CHART_DIR, 'ci/test-values.yaml')]);
    expect(lint.code, lint.stdout + lint.stderr).toBe(0);
    const typo = await helm3(['template', 'r', CHART_DIR, ...REQUIRED, '--set', 'bridge.watchKind=Deployment']);
    expect(typo.code).not.toBe(0);
    expect(typo.stderr).toContain('watchKind');

    // The release's generated AUTH_TOKEN and CALLBACK_SECRET are random in each render.
    const objectsOf = (stream: string) =>
      manifestsOf(stream).map((object) =>
        object.kind === 'Secret' && (object.data as Record<string, string> | undefined)?.AUTH_TOKEN !== undefined
          ? { ...object, data: { AUTH_TOKEN: 'random', CALLBACK_SECRET: 'random' } }
          : object,
      );
    const sets = [{ values: REQUIRED, release: 'image-clone-controller', namespace: NAMESPACE }, ...rendered];
    for (const { values, release, namespace } of sets) {
      const args = ['template', release, CHART_DIR, '--namespace', namespace, ...values];
      const [four, three] = await Promise.all([helm(args), helm3(args)]);
      expect(four.code, four.stderr).toBe(0);
      expect(three.code, `helm 3 ${values.join(' ')}: ${three.stderr}`).toBe(0);
      const objects = objectsOf(four.stdout);
      expect(objects.length).toBeGreaterThan(0);
      expect(objectsOf(three.stdout), values.join(' ')).toEqual(objects);
    }
  });
});

describe('kustomize', () => {
  it('`kubectl apply -k k8s` installs what `kubectl apply -f` does, without the example apps, at the package version', async () => {
    const rendered = await kubectl(['kustomize', join(REPO_ROOT, 'k8s')]);
    const objects = await dryRun(rendered);
    const names = (list: readonly KubeObject[]) => list.map((object) => `${object.kind}/${object.metadata.name}`).sort();
    // What the README's kubectl path applies (the Secrets are created by hand in either path).
    const plainFiles = [
      'rbac/00-namespace.yml',
      'rbac/01-service-account.yml',
      'rbac/02-cluster-role.yml',
      'rbac/03-cluster-role-binding.yml',
      'rbac/04-leader-election-role.yml',
      'rbac/05-leader-election-role-binding.yml',
      'rbac/06-admission-guardrails.yml',
      'setup/cloner-deployment.yml',
      'setup/network-policies.yml',
      'setup/pod-disruption-budgets.yml',
    ];
    const plain = await dryRun(
      (await Promise.all(plainFiles.map((file) => readFile(join(REPO_ROOT, 'k8s', file), 'utf8')))).join('\n---\n'),
    );
    expect(names(objects)).toEqual([...names(plain), 'ConfigMap/image-clone-controller-dashboard'].sort());
    expect(names(objects).filter((name) => /nginx|node-exporter/.test(name))).toEqual([]);
    for (const deployment of find(objects, 'Deployment')) {
      for (const container of podSpecOf(deployment).containers) {
        expect(container.image).toBe(`ghcr.io/image-clone-controller/image-clone-controller:${VERSION}`);
      }
    }
    // The shared settings come from the one place, the kustomization.
    const kustomization = await readFile(join(REPO_ROOT, 'k8s/kustomization.yaml'), 'utf8');
    const account = /BACKUP_NAMESPACE=(\S+)/.exec(kustomization)?.[1];
    expect(account).toBeDefined();
    expect(dataOf(one(objects, 'ConfigMap', 'image-cloner-config')).BACKUP_NAMESPACE).toBe(account);
    const dashboard = one(objects, 'ConfigMap', 'image-clone-controller-dashboard');
    expect(dataOf(dashboard)['image-clone-controller.json']).toBe(
      await readFile(join(CHART_DIR, 'files/grafana-dashboard.json'), 'utf8'),
    );
  });
});

describe('k8s/monitoring', () => {
  it('applies where the Prometheus operator is, scraping every bridge replica and the function once', async () => {
    const files = ['k8s/setup/cloner-deployment.yml', 'k8s/monitoring/service-monitor.yml', 'k8s/monitoring/prometheus-rule.yml'];
    const objects = await dryRun(
      (await Promise.all(files.map((file) => readFile(join(REPO_ROOT, file), 'utf8')))).join('\n---\n'),
    );
    const selector = specOf<{ selector: { matchLabels: Record<string, string> } }>(one(objects, 'ServiceMonitor')).selector
      .matchLabels;
    const scraped = find(objects, 'Service').filter((service) =>
      Object.entries(selector).every(([label, value]) => service.metadata.labels?.[label] === value),
    );
    expect(scraped.map((service) => service.metadata.name).sort()).toEqual(['clone-function', 'image-cloner-metrics']);
    const bridgePods = specOf<{ selector: Record<string, string> }>(one(objects, 'Service', 'image-cloner-metrics')).selector;
    expect(bridgePods).toEqual({ 'app.kubernetes.io/name': 'image-cloner' });
  });
});

describe('admission guardrails', () => {
  const bridgeUser = (namespace: string, account: string) => `system:serviceaccount:${namespace}:${account}`;

  /** A Pod as a ReplicaSet would create it from a Deployment's template (nothing runs it here). */
  async function podFrom(deployment: KubeObject, name: string, namespace: string): Promise<void> {
    const template = (deployment as unknown as { spec: { template: { metadata: object; spec: object } } }).spec.template;
    await kubectl(
      ['apply', '-f', '-'],
      JSON.stringify({ apiVersion: 'v1', kind: 'Pod', metadata: { ...template.metadata, name, namespace }, spec: template.spec }),
    );
  }

  async function labelAs(user: string, namespace: string, pod: string, label: string) {
    return cluster.kubectl(['label', '--overwrite', `--as=${user}`, '-n', namespace, `pod/${pod}`, label]);
  }

  async function expectAllowedAndDenied(
    namespace: string,
    account: string,
    bridgeDeployment: KubeObject,
    functionDeployment: KubeObject,
  ) {
    const user = bridgeUser(namespace, account);
    await podFrom(bridgeDeployment, 'bridge-0', namespace);
    await podFrom(functionDeployment, 'function-0', namespace);

    const set = await labelAs(user, namespace, 'bridge-0', `${LEADER_LABEL}=true`);
    expect(set.code, set.stderr).toBe(0);
    const labels = JSON.parse(
      await kubectl(['get', 'pod', 'bridge-0', '-n', namespace, '-o', 'jsonpath={.metadata.labels}']),
    ) as Record<string, string>;
    expect(labels[LEADER_LABEL]).toBe('true');
    const removed = await labelAs(user, namespace, 'bridge-0', `${LEADER_LABEL}-`);
    expect(removed.code, removed.stderr).toBe(0);

    const denials = [
      // Another value, another label, a Pod of another ServiceAccount (RBAC allows each of these).
      await labelAs(user, namespace, 'bridge-0', `${LEADER_LABEL}=false`),
      await labelAs(user, namespace, 'bridge-0', 'app.kubernetes.io/component=function'),
      await labelAs(user, namespace, 'function-0', `${LEADER_LABEL}=true`),
    ];
    for (const denied of denials) {
      expect(denied.code).not.toBe(0);
      expect(denied.stderr).toContain("image-clone-controller may not change a workload's labels or owners");
    }
    await kubectl(['delete', 'pod', 'bridge-0', 'function-0', '-n', namespace, '--wait=false']);
  }

  it('never refuse anyone but the bridge, also while their ConfigMap does not exist (before k8s/setup, during an uninstall)', async () => {
    await kubectl(['apply', '-f', join(REPO_ROOT, 'k8s/rbac')]);
    expect((await cluster.kubectl(['get', 'configmap', 'image-cloner-config', '-n', NAMESPACE])).code).not.toBe(0);
    await kubectl(['create', 'namespace', 'bystander']);
    // A controller's writes and an admin's: a Deployment, a Pod's labels, an Event, a deletion.
    const controller = ['--as=system:serviceaccount:kube-system:deployment-controller', '--as-group=system:masters'];
    await kubectl([...controller, 'create', 'deployment', 'web', '--image=registry.example.com/web:1', '-n', 'bystander']);
    await kubectl(
      ['create', '-f', '-'],
      JSON.stringify({
        apiVersion: 'v1',
        kind: 'Event',
        metadata: { name: 'web.1', namespace: 'bystander' },
        involvedObject: { kind: 'Deployment', name: 'web', namespace: 'bystander' },
        reason: 'Test',
        message: 'written',
      }),
    );
    await kubectl(['set', 'image', 'deployment/web', 'web=registry.example.com/web:2', '-n', 'bystander']);
    await kubectl(['delete', 'deployment', 'web', '-n', 'bystander']);
  });

  it('allows the bridge exactly the leader label on its own Pods (k8s/rbac and k8s/setup as applied by kubectl)', async () => {
    for (const file of ['rbac', 'setup/cloner-deployment.yml']) await kubectl(['apply', '-f', join(REPO_ROOT, 'k8s', file)]);
    await kubectl([
      'patch',
      'configmap',
      'image-cloner-config',
      '-n',
      NAMESPACE,
      '--type=merge',
      '-p',
      '{"data":{"BACKUP_NAMESPACE":"backupacct"}}',
    ]);
    const deployments = JSON.parse(await kubectl(['get', 'deployments', '-n', NAMESPACE, '-o', 'json'])) as {
      items: KubeObject[];
    };
    await expectAllowedAndDenied(
      NAMESPACE,
      'image-cloner',
      one(deployments.items, 'Deployment', 'image-cloner-deployment'),
      one(deployments.items, 'Deployment', 'clone-function'),
    );
    // Outside the controller's namespace the ClusterRole lets it patch Pods (to release a
    // finalizer), never their labels.
    await kubectl(['create', 'namespace', 'tenant']);
    const tenantDeployment = one(deployments.items, 'Deployment', 'image-cloner-deployment');
    await podFrom(tenantDeployment, 'lookalike', 'tenant');
    const denied = await labelAs(bridgeUser(NAMESPACE, 'image-cloner'), 'tenant', 'lookalike', `${LEADER_LABEL}=true`);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toContain("may not change a workload's labels");
  });

  it('allows it the same for a Helm release in another namespace (the chart templates the names)', async () => {
    const namespace = 'icc-helm';
    await kubectl(['create', 'namespace', namespace]);
    const rendered = await render(REQUIRED, 'icc', namespace);
    await kubectl(['apply', '-f', '-'], rendered);
    const deployments = JSON.parse(await kubectl(['get', 'deployments', '-n', namespace, '-o', 'json'])) as {
      items: KubeObject[];
    };
    await expectAllowedAndDenied(
      namespace,
      'icc-image-clone-controller-bridge',
      one(deployments.items, 'Deployment', 'icc-image-clone-controller-bridge'),
      one(deployments.items, 'Deployment', 'icc-image-clone-controller-function'),
    );
  });
});
