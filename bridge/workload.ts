// What the bridge knows about a workload: its kind, its key in the work queue, and the few fields
// it reads. Every kind that runs images is one: those with a pod template the bridge may point at
// the backups (Deployment, DaemonSet, StatefulSet, CronJob), and those it only backs up (a Job's
// template is immutable; changing a running Pod's image restarts it). The shape is loose on
// purpose: objects come both from deserialised lists and from raw watch events.

export const FINALIZER = 'image-clone-controller.io/backup';
export const OPT_OUT_ANNOTATION = 'image-clone-controller.io/ignore';
/** `pin` or `backup-only`, on a workload or its namespace. */
export const MODE_ANNOTATION = 'image-clone-controller.io/mode';
/** JSON: container name → the reference it had before the bridge pointed it at its backup. */
export const ORIGINAL_IMAGES_ANNOTATION = 'image-clone-controller.io/original-images';
/** The annotations the bridge reads; the informers keep these and no others. */
export const READ_ANNOTATIONS = [OPT_OUT_ANNOTATION, MODE_ANNOTATION, ORIGINAL_IMAGES_ANNOTATION] as const;

/** Written by nobody but its owners: never patched, never released, no Event. */
export const PROTECTED_NAMESPACE = 'kube-system';

export const WORKLOAD_KINDS = ['Deployment', 'DaemonSet', 'StatefulSet', 'CronJob', 'Job', 'Pod'] as const;
export type WorkloadKind = (typeof WORKLOAD_KINDS)[number];

export const MODES = ['pin', 'backup-only'] as const;
/** pin: copy, then point the pod template at the copies; backup-only: copy, change nothing. */
export type Mode = (typeof MODES)[number];

export interface KindInfo {
  /** API group ('' for the core group) and version. */
  readonly group: string;
  readonly version: string;
  readonly plural: string;
  /** Where the pod spec is in an object of this kind. */
  readonly podSpecPath: readonly string[];
  /** Whether the bridge may point its images at the backups (else it only backs them up). */
  readonly pinnable: boolean;
  /**
   * Left to its owner when it has one: a Deployment's Pods (through a ReplicaSet), a CronJob's
   * Jobs, a StatefulSet's Pods are backed up as their owner.
   */
  readonly ownedLeftToOwner: boolean;
}

const TEMPLATE = ['spec', 'template', 'spec'] as const;

export const KINDS: Readonly<Record<WorkloadKind, KindInfo>> = {
  Deployment: {
    group: 'apps',
    version: 'v1',
    plural: 'deployments',
    podSpecPath: TEMPLATE,
    pinnable: true,
    ownedLeftToOwner: false,
  },
  DaemonSet: {
    group: 'apps',
    version: 'v1',
    plural: 'daemonsets',
    podSpecPath: TEMPLATE,
    pinnable: true,
    ownedLeftToOwner: false,
  },
  StatefulSet: {
    group: 'apps',
    version: 'v1',
    plural: 'statefulsets',
    podSpecPath: TEMPLATE,
    pinnable: true,
    ownedLeftToOwner: false,
  },
  CronJob: {
    group: 'batch',
    version: 'v1',
    plural: 'cronjobs',
    podSpecPath: ['spec', 'jobTemplate', 'spec', 'template', 'spec'],
    pinnable: true,
    ownedLeftToOwner: false,
  },
  Job: { group: 'batch', version: 'v1', plural: 'jobs', podSpecPath: TEMPLATE, pinnable: false, ownedLeftToOwner: true },
  Pod: { group: '', version: 'v1', plural: 'pods', podSpecPath: ['spec'], pinnable: false, ownedLeftToOwner: true },
};

/** "apps/v1", or "v1" for the core group: as Events name the involved object's kind. */
export function apiVersionOf(kind: WorkloadKind): string {
  const { group, version } = KINDS[kind];
  return group === '' ? version : `${group}/${version}`;
}

export interface Container {
  name?: string;
  image?: string;
}

export interface PodSpec {
  containers?: Container[] | null;
  initContainers?: Container[] | null;
  /** Pods only: debugging containers added to a running Pod. */
  ephemeralContainers?: Container[] | null;
  imagePullSecrets?: { name?: string }[] | null;
  serviceAccountName?: string | null;
}

export interface OwnerReference {
  kind?: string;
  name?: string;
  controller?: boolean | null;
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
    ownerReferences?: OwnerReference[] | null;
  } | null;
  /** The kind's own shape; the pod spec is at KINDS[kind].podSpecPath. */
  spec?: Record<string, unknown> | null;
}

/** The pod spec of a workload of `kind`, if it has one. */
export function podSpecOf(kind: WorkloadKind, workload: Workload): PodSpec | undefined {
  let node: unknown = workload;
  for (const key of KINDS[kind].podSpecPath) {
    if (typeof node !== 'object' || node === null) return undefined;
    node = (node as Record<string, unknown>)[key];
  }
  return typeof node === 'object' && node !== null ? (node as PodSpec) : undefined;
}

/** Managed by a controller (a ReplicaSet, a CronJob, a StatefulSet, …). */
export function hasOwner(workload: Workload): boolean {
  return (workload.metadata?.ownerReferences ?? []).some((owner) => owner?.controller === true);
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
