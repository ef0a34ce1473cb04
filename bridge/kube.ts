// The thin layer over client-node: where the cluster is, and the four calls the bridge makes on a
// workload kind (list, read, patch, and the watch path its informer uses).

import {
  ApiException,
  AppsV1Api,
  KubeConfig,
  Observable,
  PatchStrategy,
  setHeaderOptions,
  type ConfigurationOptions,
  type KubernetesListObject,
  type KubernetesObject,
  type ObservableMiddleware,
  type RequestContext,
  type ResponseContext,
} from '@kubernetes/client-node';
import { delimiter } from 'node:path';
import type { JsonPatchOperation } from './patch.ts';
import type { Workload, WorkloadKind } from './workload.ts';

/** A kubeconfig path (or list, as in $KUBECONFIG), or the pod's ServiceAccount when undefined. */
export function loadKubeConfig(kubeconfig: string | undefined): KubeConfig {
  const config = new KubeConfig();
  if (kubeconfig === undefined) {
    config.loadFromCluster();
    return config;
  }
  const [first, ...more] = kubeconfig.split(delimiter).filter(Boolean);
  config.loadFromFile(first!);
  for (const path of more) {
    const other = new KubeConfig();
    other.loadFromFile(path);
    config.mergeConfig(other, true);
  }
  return config;
}

/**
 * Aborts a request after `ms`. client-node 2.x sets no timeout of its own on API calls (undici's
 * defaults are minutes), and a list that hangs would hold an informer's start forever.
 */
export function timeoutOptions(ms: number, options?: ConfigurationOptions): ConfigurationOptions {
  const middleware: ObservableMiddleware = {
    pre: (request: RequestContext) => {
      request.setSignal(AbortSignal.timeout(ms));
      return new Observable(Promise.resolve(request));
    },
    post: (response: ResponseContext) => new Observable(Promise.resolve(response)),
  };
  return { ...options, middleware: [...(options?.middleware ?? []), middleware], middlewareMergeStrategy: 'append' };
}

export interface WorkloadApi {
  readonly kind: WorkloadKind;
  /** The collection across all namespaces, as the informer watches it. */
  readonly watchPath: string;
  list(): Promise<KubernetesListObject<KubernetesObject>>;
  /** The object as stored now, or undefined when it does not exist. */
  read(namespace: string, name: string): Promise<Workload | undefined>;
  patch(namespace: string, name: string, operations: readonly JsonPatchOperation[]): Promise<Workload>;
}

export const API_TIMEOUT_MS = 60_000;

export function workloadApis(config: KubeConfig, timeoutMs = API_TIMEOUT_MS): Record<WorkloadKind, WorkloadApi> {
  const apps = config.makeApiClient(AppsV1Api);
  const jsonPatch = () => setHeaderOptions('Content-Type', PatchStrategy.JsonPatch, timeoutOptions(timeoutMs));
  return {
    Deployment: {
      kind: 'Deployment',
      watchPath: '/apis/apps/v1/deployments',
      list: () => apps.listDeploymentForAllNamespaces({}, timeoutOptions(timeoutMs)),
      read: (namespace, name) =>
        notFoundAsUndefined(apps.readNamespacedDeployment({ namespace, name }, timeoutOptions(timeoutMs))),
      patch: (namespace, name, operations) => apps.patchNamespacedDeployment({ namespace, name, body: operations }, jsonPatch()),
    },
    DaemonSet: {
      kind: 'DaemonSet',
      watchPath: '/apis/apps/v1/daemonsets',
      list: () => apps.listDaemonSetForAllNamespaces({}, timeoutOptions(timeoutMs)),
      read: (namespace, name) =>
        notFoundAsUndefined(apps.readNamespacedDaemonSet({ namespace, name }, timeoutOptions(timeoutMs))),
      patch: (namespace, name, operations) => apps.patchNamespacedDaemonSet({ namespace, name, body: operations }, jsonPatch()),
    },
  };
}

async function notFoundAsUndefined<T>(request: Promise<T>): Promise<T | undefined> {
  try {
    return await request;
  } catch (error) {
    if (statusCode(error) === 404) return undefined;
    throw error;
  }
}

/** The HTTP status of a failed API call or watch, when there was one. */
export function statusCode(error: unknown): number | undefined {
  if (error instanceof ApiException) return error.code;
  const code = (error as { statusCode?: unknown; code?: unknown } | undefined)?.statusCode;
  return typeof code === 'number' ? code : undefined;
}

/**
 * A JSON Patch whose `test` failed (422), or a write that lost a race (409): the object changed
 * since it was read.
 */
export function isStale(error: unknown): boolean {
  const code = statusCode(error);
  return code === 409 || code === 422;
}

/**
 * A short, log-safe description. ApiException's own message embeds every response header and
 * the whole body; the Status message is what a human needs.
 */
export function describeError(error: unknown): string {
  if (error instanceof ApiException) {
    const body = error.body as { message?: unknown; reason?: unknown } | string | undefined;
    let message: string | undefined;
    if (typeof body === 'string') {
      try {
        message = String((JSON.parse(body) as { message?: unknown }).message ?? body);
      } catch {
        message = body;
      }
    } else if (body !== undefined && body !== null && typeof body.message === 'string') {
      message = body.message;
    }
    return `HTTP ${error.code}${message ? `: ${message.slice(0, 500)}` : ''}`;
  }
  if (error instanceof Error) return `${error.name === 'Error' ? '' : `${error.name}: `}${error.message}`.slice(0, 500);
  return String(error).slice(0, 500);
}
