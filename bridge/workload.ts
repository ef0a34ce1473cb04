// What the bridge knows about a workload: its kind, its key in the work queue, and the few fields
// of a Deployment or DaemonSet it reads. The shape is loose on purpose: objects come both from
// client-node's deserialised lists (class instances, Date timestamps) and from raw watch events
// (plain JSON, string timestamps).

export const FINALIZER = 'image-clone-controller.io/backup';
export const OPT_OUT_ANNOTATION = 'image-clone-controller.io/ignore';

export const WORKLOAD_KINDS = ['Deployment', 'DaemonSet'] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

export interface Container {
  name?: string;
  image?: string;
}

export interface Workload {
  metadata?: {
    name?: string;
    namespace?: string;
    uid?: string;
    resourceVersion?: string;
    annotations?: Record<string, string> | null;
    finalizers?: string[] | null;
    deletionTimestamp?: Date | string | null;
  } | null;
  spec?: {
    template?: {
      spec?: {
        containers?: Container[] | null;
        initContainers?: Container[] | null;
      } | null;
    } | null;
  } | null;
}

export interface WorkloadRef {
  readonly kind: WorkloadKind;
  readonly namespace: string;
  readonly name: string;
}

/** Where workloads are read from without a call to the API server (the informers' cache). */
export interface WorkloadReader {
  get(kind: WorkloadKind, namespace: string, name: string): Workload | undefined;
}

/** `Kind/namespace/name`: Kubernetes names never contain "/", so the key splits back unambiguously. */
export function workloadKey(ref: WorkloadRef): string {
  return `${ref.kind}/${ref.namespace}/${ref.name}`;
}

export function parseWorkloadKey(key: string): WorkloadRef | undefined {
  const parts = key.split('/');
  if (parts.length !== 3) return undefined;
  const [kind, namespace, name] = parts as [string, string, string];
  if (!isWorkloadKind(kind) || namespace === '' || name === '') return undefined;
  return { kind, namespace, name };
}

export function isWorkloadKind(value: string): value is WorkloadKind {
  return (WORKLOAD_KINDS as readonly string[]).includes(value);
}

/** The key of an object seen by an informer of `kind`, or undefined when it lacks a name. */
export function keyOf(kind: WorkloadKind, workload: Workload): string | undefined {
  const name = workload.metadata?.name;
  const namespace = workload.metadata?.namespace;
  if (!name || !namespace) return undefined;
  return workloadKey({ kind, namespace, name });
}
