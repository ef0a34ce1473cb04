// The thin layer over client-node: where the cluster is, one plain JSON call with its credentials,
// and the four calls the bridge makes on a workload kind (list, read, patch, and the watch path
// its informer uses).

import {
  HttpMethod,
  KubeConfig,
  RequestContext,
  type KubernetesListObject,
  type KubernetesObject,
} from '@kubernetes/client-node';
import { delimiter } from 'node:path';
import { request } from 'undici';
import type { JsonPatchOperation } from '../reconcile/patch.ts';
import { KINDS, WORKLOAD_KINDS, type Workload, type WorkloadKind } from '../workload.ts';

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

export interface WorkloadApi {
  readonly kind: WorkloadKind;
  /** The collection across all namespaces, as the informer watches it. */
  readonly watchPath: string;
  /** One page of the collection (the next one's token: metadata._continue). */
  list(page: ListPageOptions): Promise<KubernetesListObject<KubernetesObject>>;
  /** The object as stored now, or undefined when it does not exist. */
  read(namespace: string, name: string): Promise<Workload | undefined>;
  patch(namespace: string, name: string, operations: readonly JsonPatchOperation[]): Promise<Workload>;
}

export interface ListPageOptions {
  readonly limit?: number;
  readonly continue?: string;
}

export const API_TIMEOUT_MS = 60_000;

export interface KubeRequest {
  readonly method: 'GET' | 'POST' | 'PUT' | 'PATCH';
  /** Path and query, e.g. /apis/apps/v1/deployments?limit=500. */
  readonly path: string;
  readonly body?: unknown;
  /** Of the body; default application/json. */
  readonly contentType?: string;
  readonly timeoutMs: number;
}

const HTTP_METHODS = { GET: HttpMethod.GET, POST: HttpMethod.POST, PUT: HttpMethod.PUT, PATCH: HttpMethod.PATCH } as const;

/**
 * A call the API server refused. The message is the short form a log line or an Event needs
 * ("HTTP 422: <the Status message>"), not the headers and body client-node's ApiException carries.
 */
export class KubeApiError extends Error {
  readonly statusCode: number;

  constructor(statusCode: number, statusMessage: string | undefined) {
    super(`HTTP ${statusCode}${statusMessage ? `: ${statusMessage.slice(0, 500)}` : ''}`);
    this.name = 'KubeApiError';
    this.statusCode = statusCode;
  }
}

/** The message of a Status answer, or the text of an answer that is not one. */
function statusMessage(text: string): string | undefined {
  let status: unknown;
  try {
    status = JSON.parse(text);
  } catch {
    return text;
  }
  const message = (status as { message?: unknown } | null)?.message;
  return typeof message === 'string' ? message : undefined;
}

/**
 * One call to the API server with the kubeconfig's credentials and connection, answered as plain
 * JSON. The generated client deserialises every answer into model classes (and serialises every
 * body from them), which costs more CPU and garbage than the call itself when the bridge patches
 * thousands of workloads and reads a handful of fields. A refusal throws a KubeApiError.
 */
export async function kubeJson<T>(config: KubeConfig, call: KubeRequest): Promise<T> {
  const cluster = config.getCurrentCluster();
  if (cluster === null) throw new Error('the kubeconfig has no current cluster');
  const url = `${cluster.server.replace(/\/+$/, '')}${call.path}`;
  const context = new RequestContext(url, HTTP_METHODS[call.method]);
  await config.applySecurityAuthentication(context);
  const response = await request(url, {
    method: call.method,
    headers: {
      ...context.getHeaders(),
      accept: 'application/json',
      ...(call.body !== undefined && { 'content-type': call.contentType ?? 'application/json' }),
    },
    ...(call.body !== undefined && { body: JSON.stringify(call.body) }),
    ...(context.getDispatcher() !== undefined && { dispatcher: context.getDispatcher() }),
    signal: AbortSignal.timeout(call.timeoutMs),
  });
  const text = await response.body.text();
  if (response.statusCode < 200 || response.statusCode > 299) throw new KubeApiError(response.statusCode, statusMessage(text));
  return JSON.parse(text) as T;
}

interface RawList {
  metadata?: { resourceVersion?: string; continue?: string };
  items?: KubernetesObject[];
}

/** The API of each watched kind. */
export type WorkloadApis = Readonly<Partial<Record<WorkloadKind, WorkloadApi>>>;

/** The list, read, patch and watch calls of the given kinds. */
export function workloadApis(
  config: KubeConfig,
  kinds: readonly WorkloadKind[] = WORKLOAD_KINDS,
  timeoutMs = API_TIMEOUT_MS,
): WorkloadApis {
  const api = (kind: WorkloadKind): WorkloadApi => {
    const base = collectionPath(kind);
    return {
      kind,
      watchPath: base,
      list: pagedList(config, base, timeoutMs),
      read: (namespace, name) =>
        notFoundAsUndefined(kubeJson<Workload>(config, { method: 'GET', path: objectPath(kind, namespace, name), timeoutMs })),
      patch: (namespace, name, operations) =>
        kubeJson<Workload>(config, {
          method: 'PATCH',
          path: objectPath(kind, namespace, name),
          body: operations,
          contentType: 'application/json-patch+json',
          timeoutMs,
        }),
    };
  };
  return Object.fromEntries(kinds.map((kind) => [kind, api(kind)]));
}

/** Pages of the collection at `path` (the next page's token in metadata._continue). */
export function pagedList(
  config: KubeConfig,
  path: string,
  timeoutMs = API_TIMEOUT_MS,
): (page: ListPageOptions) => Promise<KubernetesListObject<KubernetesObject>> {
  return async (page) => {
    const query = new URLSearchParams();
    if (page.limit !== undefined) query.set('limit', String(page.limit));
    if (page.continue !== undefined) query.set('continue', page.continue);
    const list = await kubeJson<RawList>(config, { method: 'GET', path: query.size > 0 ? `${path}?${query}` : path, timeoutMs });
    return {
      metadata: {
        ...(list.metadata?.resourceVersion !== undefined && { resourceVersion: list.metadata.resourceVersion }),
        ...(list.metadata?.continue && { _continue: list.metadata.continue }),
      },
      items: list.items ?? [],
    };
  };
}

/** `/apis/apps/v1/deployments`, `/api/v1/pods`: every object of a kind, in all namespaces. */
function collectionPath(kind: WorkloadKind): string {
  const { group, version, plural } = KINDS[kind];
  return `${group === '' ? '/api' : `/apis/${group}`}/${version}/${plural}`;
}

function objectPath(kind: WorkloadKind, namespace: string, name: string): string {
  const { group, version, plural } = KINDS[kind];
  const prefix = group === '' ? '/api' : `/apis/${group}`;
  return `${prefix}/${version}/namespaces/${encodeURIComponent(namespace)}/${plural}/${encodeURIComponent(name)}`;
}

async function notFoundAsUndefined<T>(request: Promise<T>): Promise<T | undefined> {
  try {
    return await request;
  } catch (error) {
    if (statusCode(error) === 404) return undefined;
    throw error;
  }
}

/** The HTTP status of a failed API call (a KubeApiError) or watch, when there was one. */
export function statusCode(error: unknown): number | undefined {
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
