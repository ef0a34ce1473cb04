// The kubelet's part, for a cluster without one (testbed/kube-cluster.ts): what the system harness
// needs to start the controller's processes from what was installed in the cluster, whichever way
// it was installed.
//
// - discover(): the Deployments whose containers run the bridge and the function (by their
//   command), the Services their configuration names, the bridge's ServiceAccount;
// - containerEnv(): a container's environment as the kubelet builds it at container start: envFrom
//   (ConfigMaps, Secrets), env (values, $(VAR) references, configMapKeyRef, secretKeyRef, the
//   downward API's metadata.name and metadata.namespace), Secret and ConfigMap volumes written to
//   files with the paths that point into them rewritten, and the Services' cluster DNS names
//   (http://name.namespace.svc…) pointed at the loopback stand-ins that take their place;
// - createPod() / deletePod(): a Pod object from a Deployment's template, as a ReplicaSet creates
//   it (nothing runs it), so that what a process does to its own Pod (the leader label) happens;
// - podSelected(): whether a Service's selector picks a Pod now (its endpoints, with readiness
//   left to the caller).

import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Agent, request } from 'undici';
import type { KubeCluster } from './kube-cluster.ts';

interface EnvVar {
  readonly name: string;
  readonly value?: string;
  readonly valueFrom?: {
    readonly configMapKeyRef?: { readonly name: string; readonly key: string; readonly optional?: boolean };
    readonly secretKeyRef?: { readonly name: string; readonly key: string; readonly optional?: boolean };
    readonly fieldRef?: { readonly fieldPath: string };
  };
}

interface EnvFromSource {
  readonly prefix?: string;
  readonly configMapRef?: { readonly name: string; readonly optional?: boolean };
  readonly secretRef?: { readonly name: string; readonly optional?: boolean };
}

interface ContainerSpec {
  readonly name: string;
  readonly command?: readonly string[];
  readonly env?: readonly EnvVar[];
  readonly envFrom?: readonly EnvFromSource[];
  readonly volumeMounts?: readonly { readonly name: string; readonly mountPath: string }[];
}

interface Volume {
  readonly name: string;
  readonly secret?: { readonly secretName: string; readonly items?: readonly { key: string; path: string }[] };
  readonly configMap?: { readonly name: string; readonly items?: readonly { key: string; path: string }[] };
}

interface PodTemplate {
  readonly metadata?: { readonly labels?: Record<string, string>; readonly annotations?: Record<string, string> };
  readonly spec: {
    readonly serviceAccountName?: string;
    readonly containers: readonly ContainerSpec[];
    readonly volumes?: readonly Volume[];
  };
}

interface Deployment {
  readonly metadata: { readonly name: string };
  readonly spec: { readonly template: PodTemplate };
}

/** The entry points of the one image, as the Dockerfile and the manifests name them. */
const BRIDGE_ENTRY = 'dist/bridge/main.js';
const FUNCTION_ENTRY = 'dist/functions/node.js';

export interface DiscoveredInstall {
  readonly with: 'kubectl' | 'helm';
  readonly namespace: string;
  readonly release: string | undefined;
  readonly bridgeDeployment: string;
  readonly functionDeployment: string | undefined;
  readonly bridgeService: string;
  readonly functionService: string;
  readonly serviceAccount: string;
}

export type PodRuntime = Awaited<ReturnType<typeof podRuntime>>;

export async function podRuntime(cluster: KubeCluster, namespace: string) {
  const agent = new Agent({ connect: { ca: await readFile(cluster.caFile) } });
  const api = async <T>(method: 'GET' | 'POST' | 'DELETE', path: string, body?: unknown): Promise<T | undefined> => {
    const response = await request(`${cluster.server}${path}`, {
      method,
      dispatcher: agent,
      headers: {
        authorization: `Bearer ${cluster.adminToken}`,
        accept: 'application/json',
        ...(body !== undefined && { 'content-type': 'application/json' }),
      },
      ...(body !== undefined && { body: JSON.stringify(body) }),
    });
    const text = await response.body.text();
    if (response.statusCode === 404) return undefined;
    if (response.statusCode >= 300) throw new Error(`${method} ${path}: HTTP ${response.statusCode} ${text.slice(0, 500)}`);
    return JSON.parse(text) as T;
  };
  const inNamespace = (collection: string, name?: string) =>
    `/api/v1/namespaces/${namespace}/${collection}${name === undefined ? '' : `/${encodeURIComponent(name)}`}`;
  const deployment = async (name: string): Promise<Deployment> => {
    const found = await api<Deployment>('GET', `/apis/apps/v1/namespaces/${namespace}/deployments/${encodeURIComponent(name)}`);
    if (found === undefined) throw new Error(`no Deployment ${namespace}/${name}`);
    return found;
  };
  const objectData = async (kind: 'configmaps' | 'secrets', name: string, optional = false): Promise<Record<string, string>> => {
    const object = await api<{ data?: Record<string, string> }>('GET', inNamespace(kind, name));
    if (object === undefined) {
      if (optional) return {};
      throw new Error(`${kind} ${namespace}/${name} does not exist: the container could not start`);
    }
    const data = object.data ?? {};
    return kind === 'secrets'
      ? Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value, 'base64').toString()]))
      : data;
  };

  /** The environment the kubelet would give the Deployment's (first) container in Pod `pod`. */
  const containerEnv = async (deploymentName: string, pod: string, services: ReadonlyMap<string, string>) => {
    const template = (await deployment(deploymentName)).spec.template;
    const container = template.spec.containers[0]!;
    const env: Record<string, string> = {};
    for (const source of container.envFrom ?? []) {
      const data = source.configMapRef
        ? await objectData('configmaps', source.configMapRef.name, source.configMapRef.optional)
        : source.secretRef
          ? await objectData('secrets', source.secretRef.name, source.secretRef.optional)
          : {};
      for (const [key, value] of Object.entries(data)) env[`${source.prefix ?? ''}${key}`] = value;
    }
    for (const variable of container.env ?? []) {
      const from = variable.valueFrom;
      if (from?.configMapKeyRef) {
        const value = (await objectData('configmaps', from.configMapKeyRef.name, from.configMapKeyRef.optional))[
          from.configMapKeyRef.key
        ];
        if (value !== undefined) env[variable.name] = value;
      } else if (from?.secretKeyRef) {
        const value = (await objectData('secrets', from.secretKeyRef.name, from.secretKeyRef.optional))[from.secretKeyRef.key];
        if (value !== undefined) env[variable.name] = value;
      } else if (from?.fieldRef) {
        const fields: Record<string, string> = { 'metadata.name': pod, 'metadata.namespace': namespace };
        const value = fields[from.fieldRef.fieldPath];
        if (value === undefined) throw new Error(`the harness does not provide fieldRef ${from.fieldRef.fieldPath}`);
        env[variable.name] = value;
      } else {
        // $(VAR) names a variable defined before this one; $$ is a literal $.
        env[variable.name] = (variable.value ?? '').replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (match, name?: string) =>
          name === undefined ? '$' : (env[name] ?? match),
        );
      }
    }
    // Mounted Secrets and ConfigMaps, as files under this Pod's own folder.
    const mounts = new Map<string, string>();
    for (const mount of container.volumeMounts ?? []) {
      const volume = template.spec.volumes?.find((candidate) => candidate.name === mount.name);
      const source = volume?.secret
        ? { data: await objectData('secrets', volume.secret.secretName), items: volume.secret.items }
        : volume?.configMap
          ? { data: await objectData('configmaps', volume.configMap.name), items: volume.configMap.items }
          : undefined;
      if (source === undefined) continue;
      const local = join(cluster.dir, 'pods', pod, mount.mountPath);
      const files = source.items ?? Object.keys(source.data).map((key) => ({ key, path: key }));
      for (const { key, path } of files) {
        const value = source.data[key];
        if (value === undefined) throw new Error(`volume ${mount.name}: no key ${key}`);
        await mkdir(dirname(join(local, path)), { recursive: true });
        await writeFile(join(local, path), value, { mode: 0o600 });
      }
      mounts.set(mount.mountPath.replace(/\/+$/, ''), local);
    }
    for (const [name, value] of Object.entries(env)) {
      let rewritten = value;
      for (const [mountPath, local] of mounts) {
        if (rewritten === mountPath || rewritten.startsWith(`${mountPath}/`))
          rewritten = local + rewritten.slice(mountPath.length);
      }
      env[name] = standInFor(rewritten, services);
    }
    return env;
  };

  return {
    containerEnv,

    async discover(installedWith: 'kubectl' | 'helm', release: string | undefined): Promise<DiscoveredInstall> {
      const list = await api<{ items: Deployment[] }>('GET', `/apis/apps/v1/namespaces/${namespace}/deployments`);
      const running = (entry: string) =>
        (list?.items ?? []).filter((candidate) =>
          candidate.spec.template.spec.containers.some((c) => c.command?.includes(entry)),
        );
      const [bridge, ...moreBridges] = running(BRIDGE_ENTRY);
      const functions = running(FUNCTION_ENTRY);
      if (bridge === undefined || moreBridges.length > 0 || functions.length > 1)
        throw new Error(`expected one bridge and at most one function Deployment in ${namespace}`);
      const raw = await containerEnv(bridge.metadata.name, 'discovery', new Map());
      const serviceOf = (variable: string) => {
        const name = clusterServiceName(raw[variable] ?? '');
        if (name === undefined) throw new Error(`${variable} (${raw[variable]}) names no Service of the cluster`);
        return name;
      };
      return {
        with: installedWith,
        namespace,
        release,
        bridgeDeployment: bridge.metadata.name,
        functionDeployment: functions[0]?.metadata.name,
        bridgeService: serviceOf('CALLBACK_URL'),
        functionService: serviceOf('FUNCTION_URL'),
        serviceAccount: bridge.spec.template.spec.serviceAccountName ?? 'default',
      };
    },

    async serviceSelector(service: string): Promise<Record<string, string>> {
      const found = await api<{ spec: { selector?: Record<string, string> } }>('GET', inNamespace('services', service));
      if (found?.spec.selector === undefined) throw new Error(`Service ${namespace}/${service} has no selector`);
      return found.spec.selector;
    },

    async createPod(deploymentName: string, name: string): Promise<void> {
      const template = (await deployment(deploymentName)).spec.template;
      await api('DELETE', inNamespace('pods', name));
      await api('POST', inNamespace('pods'), {
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace, labels: template.metadata?.labels ?? {}, annotations: template.metadata?.annotations ?? {} },
        spec: template.spec,
      });
    },

    async deletePod(name: string): Promise<void> {
      await api('DELETE', inNamespace('pods', name));
    },

    /** Whether the Pod exists and carries every label of `selector`. */
    async podSelected(name: string, selector: Readonly<Record<string, string>>): Promise<boolean> {
      const pod = await api<{ metadata: { labels?: Record<string, string> } }>('GET', inNamespace('pods', name));
      return pod !== undefined && Object.entries(selector).every(([label, value]) => pod.metadata.labels?.[label] === value);
    },

    /** The labels of a Pod now (undefined: there is none). */
    async podLabels(name: string): Promise<Record<string, string> | undefined> {
      const pod = await api<{ metadata: { labels?: Record<string, string> } }>('GET', inNamespace('pods', name));
      return pod === undefined ? undefined : (pod.metadata.labels ?? {});
    },

    close: () => agent.close(),
  };
}

/** `name` of a Service's cluster DNS name in a URL (http://name.namespace.svc[.cluster.local][:port]/…). */
export function clusterServiceName(url: string): string | undefined {
  try {
    return /^([a-z0-9-]+)\.[a-z0-9-]+\.svc(\.cluster\.local)?$/.exec(new URL(url).hostname)?.[1];
  } catch {
    return undefined;
  }
}

/** A URL naming a Service that has a stand-in, pointed at the stand-in (path and query kept). */
function standInFor(value: string, services: ReadonlyMap<string, string>): string {
  const service = clusterServiceName(value);
  const standIn = service === undefined ? undefined : services.get(service);
  if (standIn === undefined) return value;
  const url = new URL(value);
  return `${standIn}${url.pathname === '/' ? '' : url.pathname}${url.search}`;
}
