// Namespaces, for the one thing the bridge reads of them: the mode annotation
// (image-clone-controller.io/mode) that sets pin or backup-only for every workload inside.

import type { KubeConfig } from '@kubernetes/client-node';
import { MODE_ANNOTATION } from '../workload.ts';
import { API_TIMEOUT_MS, pagedList } from './api.ts';
import type { WatchedCollection } from './informers.ts';

export interface NamespaceView {
  metadata?: { name?: string; resourceVersion?: string; annotations?: Record<string, string> };
}

/** A namespace as the cache keeps it: its name, version and mode annotation. Idempotent. */
export function slimNamespace(object: unknown): NamespaceView {
  const metadata = (object as NamespaceView | null | undefined)?.metadata;
  const mode = metadata?.annotations?.[MODE_ANNOTATION];
  return {
    metadata: {
      ...(metadata?.name !== undefined && { name: metadata.name }),
      ...(metadata?.resourceVersion !== undefined && { resourceVersion: metadata.resourceVersion }),
      ...(mode !== undefined && { annotations: { [MODE_ANNOTATION]: mode } }),
    },
  };
}

export function namespaceCollection(config: KubeConfig, timeoutMs = API_TIMEOUT_MS): WatchedCollection {
  const path = '/api/v1/namespaces';
  return { kind: 'Namespace', watchPath: path, project: slimNamespace, list: pagedList(config, path, timeoutMs) };
}
