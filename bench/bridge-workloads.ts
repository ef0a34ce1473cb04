// The workloads the bridge benchmark loads into the API server: Deployments, StatefulSets and
// CronJobs (kinds the bridge pins) and Pods without an owner (backed up only), each the size of a
// real one and carrying the project's finalizer; and the pull secrets a cluster's tenants hold,
// a few per namespace, named by many workloads, some through a ServiceAccount.

import { randomBytes } from 'node:crypto';
import { FINALIZER, KINDS, type WorkloadKind } from '../bridge/workload.ts';

export const BENCH_KINDS = ['Deployment', 'StatefulSet', 'CronJob', 'Pod'] as const satisfies readonly WorkloadKind[];
export type BenchKind = (typeof BENCH_KINDS)[number];

/** Deployments keep the names (and so the images) of the first version of the benchmark. */
const NAME_PREFIX: Record<BenchKind, string> = { Deployment: 'app', StatefulSet: 'db', CronJob: 'cron', Pod: 'pod' };

export interface Target {
  readonly kind: BenchKind;
  readonly namespace: string;
  readonly name: string;
  /** Its number among the objects of its kind. */
  readonly index: number;
}

export function makeTargets(counts: Readonly<Record<BenchKind, number>>, namespaces: number): Target[] {
  return BENCH_KINDS.flatMap((kind) =>
    Array.from({ length: counts[kind] }, (_, index) => ({
      kind,
      namespace: `bench-${index % namespaces}`,
      name: `${NAME_PREFIX[kind]}-${index}`,
      index,
    })),
  );
}

/** `/apis/apps/v1/deployments`, `/api/v1/namespaces/bench-0/pods`. */
export function collectionPath(kind: WorkloadKind, namespace?: string): string {
  const { group, version, plural } = KINDS[kind];
  const prefix = group === '' ? `/api/${version}` : `/apis/${group}/${version}`;
  return `${prefix}/${namespace === undefined ? '' : `namespaces/${namespace}/`}${plural}`;
}

export const objectPath = (target: Target) => `${collectionPath(target.kind, target.namespace)}/${target.name}`;

/** JSON Pointer to the first container's image. */
export const firstImagePath = (kind: WorkloadKind) => `/${KINDS[kind].podSpecPath.join('/')}/containers/0/image`;

export const appImage = (target: Target, tag: string) => `bench.example.com/${target.namespace}/${target.name}:${tag}`;

/** Every other workload has a sidecar from a small shared set: one copy serves many workloads. */
export const sidecarImage = (target: Target) =>
  target.index % 2 === 1 ? `ghcr.io/bench/sidecar-${target.index % 20}:1.0` : undefined;

export const initialImages = (target: Target) =>
  [appImage(target, '1.0'), sidecarImage(target)].filter((image) => image !== undefined);

// --- pull secrets -------------------------------------------------------------------------------

/**
 * Per namespace, as `kubectl create secret docker-registry` writes them:
 *   registry-app   bench.example.com         named in the pod template of every third workload
 *   registry-team  bench.example.com/<ns>    on ServiceAccount "builder", which every seventh workload
 *                                            runs as (more specific than registry-app: it wins)
 *   registry-ghcr  ghcr.io                   on the default ServiceAccount of every other namespace
 *   registry-quay  quay.io                   beside it there: matches none of the images
 * Every namespace has its default ServiceAccount, with or without them, as in a real cluster.
 */
const SECRET_KEYS: Record<string, (namespace: string) => string> = {
  'registry-app': () => 'bench.example.com',
  'registry-team': (namespace) => `bench.example.com/${namespace}`,
  'registry-ghcr': () => 'ghcr.io',
  'registry-quay': () => 'quay.io',
};
const namespaceIndex = (namespace: string) => Number(namespace.slice(namespace.lastIndexOf('-') + 1));
const defaultAccountSecrets = (namespace: string) =>
  namespaceIndex(namespace) % 2 === 0 ? ['registry-ghcr', 'registry-quay'] : [];
const namesOwnSecret = (target: Target) => target.index % 3 === 0;
// Every seventh: a step prime to the namespace count (objects go round the namespaces), so that
// each namespace has some.
const runsAsBuilder = (target: Target) => target.index % 7 === 3;

/** The username in a secret: says which secret the function was sent. */
const usernameOf = (namespace: string, secret: string) => `${namespace}.${secret}`;

/** The Secrets and ServiceAccounts of one namespace (with `pullSecrets` off: its default ServiceAccount alone). */
export function pullSecretObjects(namespace: string, pullSecrets: boolean) {
  const secretNames = pullSecrets ? ['registry-app', 'registry-team', ...defaultAccountSecrets(namespace)] : ([] as string[]);
  const secrets = secretNames.map((name) => {
    const username = usernameOf(namespace, name);
    const password = randomBytes(12).toString('hex');
    const auth = Buffer.from(`${username}:${password}`).toString('base64');
    const config = { auths: { [SECRET_KEYS[name]!(namespace)]: { username, password, auth } } };
    return {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name, namespace },
      type: 'kubernetes.io/dockerconfigjson',
      data: { '.dockerconfigjson': Buffer.from(JSON.stringify(config)).toString('base64') },
    };
  });
  const account = (name: string, secrets: string[]) => ({
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: { name, namespace },
    ...(secrets.length > 0 && { imagePullSecrets: secrets.map((secret) => ({ name: secret })) }),
  });
  const serviceAccounts = pullSecrets
    ? [account('default', defaultAccountSecrets(namespace)), account('builder', ['registry-team'])]
    : [account('default', [])];
  return { secrets, serviceAccounts };
}

/**
 * The username of the credentials the bridge must send with `image` of `target` ('' for none), as
 * the kubelet would pick them: its own secrets, then its ServiceAccount's, the most specific key.
 */
export function expectedUsername(target: Target, image: string, pullSecrets: boolean): string {
  if (!pullSecrets) return '';
  const { namespace } = target;
  if (image.startsWith('bench.example.com/')) {
    if (runsAsBuilder(target)) return usernameOf(namespace, 'registry-team');
    return namesOwnSecret(target) ? usernameOf(namespace, 'registry-app') : '';
  }
  if (image.startsWith('ghcr.io/') && !runsAsBuilder(target) && defaultAccountSecrets(namespace).includes('registry-ghcr')) {
    return usernameOf(namespace, 'registry-ghcr');
  }
  return '';
}

/** How the targets come by credentials: naming a secret, through a ServiceAccount, any at all. */
export function pullSecretShares(targets: readonly Target[], pullSecrets: boolean) {
  const count = (test: (target: Target) => boolean) => (pullSecrets ? targets.filter(test).length : 0);
  return {
    namingOne: count(namesOwnSecret),
    throughServiceAccount: count((target) => runsAsBuilder(target) || defaultAccountSecrets(target.namespace).length > 0),
    withCredentials: count((target) => initialImages(target).some((image) => expectedUsername(target, image, true) !== '')),
  };
}

// --- manifests ----------------------------------------------------------------------------------

/**
 * A workload the size of a typical one: labels, resources, env, probes, and the last-applied
 * annotation `kubectl apply` adds (a Deployment is about 4.7 KB as the API server serves it,
 * managedFields included). Pods have no owner: the bridge backs them up and releases their
 * finalizer, but never rewrites their images.
 */
export function manifestOf(target: Target, pullSecrets: boolean): Record<string, unknown> {
  const labels = { app: target.name, team: `team-${target.index % 50}`, tier: target.kind === 'CronJob' ? 'batch' : 'backend' };
  const resources = { requests: { cpu: '100m', memory: '128Mi' }, limits: { cpu: '500m', memory: '256Mi' } };
  const serves = target.kind !== 'CronJob';
  const containers: Record<string, unknown>[] = [
    {
      name: 'app',
      image: appImage(target, '1.0'),
      ...(serves && { ports: [{ name: 'http', containerPort: 8080 }] }),
      env: [
        { name: 'LOG_LEVEL', value: 'info' },
        { name: 'PORT', value: '8080' },
        { name: 'SERVICE_NAME', value: target.name },
        { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
      ],
      resources,
      ...(serves && {
        readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 10 },
        livenessProbe: { httpGet: { path: '/healthz', port: 'http' }, periodSeconds: 20 },
      }),
    },
  ];
  const sidecar = sidecarImage(target);
  if (sidecar !== undefined) {
    containers.push({ name: 'proxy', image: sidecar, ports: [{ name: 'proxy', containerPort: 15001 }], resources });
  }
  const podSpec = {
    containers,
    ...(pullSecrets && namesOwnSecret(target) && { imagePullSecrets: [{ name: 'registry-app' }] }),
    ...(pullSecrets && runsAsBuilder(target) && { serviceAccountName: 'builder' }),
    ...(target.kind === 'CronJob' && { restartPolicy: 'OnFailure' }),
  };
  const template = { metadata: { labels }, spec: podSpec };
  const selector = { matchLabels: { app: target.name } };
  const metadata = { name: target.name, namespace: target.namespace, labels, finalizers: [FINALIZER] };
  const manifest = {
    Deployment: { apiVersion: 'apps/v1', kind: 'Deployment', metadata, spec: { replicas: 2, selector, template } },
    StatefulSet: {
      apiVersion: 'apps/v1',
      kind: 'StatefulSet',
      metadata,
      spec: {
        serviceName: target.name,
        replicas: 1,
        selector,
        template,
        volumeClaimTemplates: [
          {
            metadata: { name: 'data' },
            spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } },
          },
        ],
      },
    },
    CronJob: {
      apiVersion: 'batch/v1',
      kind: 'CronJob',
      metadata,
      spec: {
        schedule: `${target.index % 60} * * * *`,
        concurrencyPolicy: 'Forbid',
        jobTemplate: { spec: { backoffLimit: 2, template } },
      },
    },
    Pod: { apiVersion: 'v1', kind: 'Pod', metadata, spec: podSpec },
  }[target.kind];
  return {
    ...manifest,
    metadata: {
      ...manifest.metadata,
      annotations: { 'kubectl.kubernetes.io/last-applied-configuration': JSON.stringify(manifest) },
    },
  };
}
