// The informers' cache holds each workload reduced to the fields the bridge reads (the Workload
// type in bridge/workload.ts): identity and version, finalizers, deletion, its controller owner,
// the annotations the bridge reads, and of its pod spec the name and image of each container,
// the pull secrets' names and the ServiceAccount. A Deployment as the API server serves it is
// several KiB (managedFields, the last-applied annotation, probes, env, status); what the bridge
// decides from is a few hundred bytes. With 10,000 workloads of 4.7 KB that is 47 MB of JSON, more
// as objects, against a few MB (the bridge's figures: docs/scale.md). A Job or Pod that has an
// owner is left to it, and kept as its name alone: most Pods of a cluster are such.
//
// The collection is listed in pages, each projected before the next is fetched, so that the
// first list never holds the whole collection as full objects either; watch events are
// projected as they arrive. A field the bridge starts reading must be added to the projection.

import {
  ListWatch,
  Watch,
  type Informer,
  type KubeConfig,
  type KubernetesListObject,
  type KubernetesObject,
  type ListPromise,
  type ObjectCache,
} from '@kubernetes/client-node';
import {
  hasOwner,
  KINDS,
  podSpecOf,
  READ_ANNOTATIONS,
  type Container,
  type PodSpec,
  type Workload,
  type WorkloadKind,
} from '../workload.ts';

/** What an informer's cache keeps of each object it lists or watches; idempotent. */
export type Projection = (object: unknown) => unknown;

/** Objects per list page: client-go's pager default. */
export const LIST_PAGE_SIZE = 500;

/**
 * One copy of each short string that workloads repeat (namespaces, the finalizer, container,
 * secret and ServiceAccount names): JSON.parse gives every object its own, 30–60 bytes each,
 * times tens of thousands of cached workloads. Bounded, so that names nobody repeats cannot grow it.
 */
const SHARED_MAX = 10_000;
const SHARED_MAX_LENGTH = 64;
const shared = new Map<string, string>();

function share(value: string): string {
  if (value.length > SHARED_MAX_LENGTH) return value;
  const known = shared.get(value);
  if (known !== undefined) return known;
  if (shared.size < SHARED_MAX) shared.set(value, value);
  return value;
}

function containersOf(list: unknown): Container[] | undefined {
  if (!Array.isArray(list)) return undefined;
  // Every entry is kept, even an odd one, so that indexes (JSON Patch paths) stay those of the object.
  return list.map((container: Container | null | undefined) => {
    // A literal of its two fields: 16 bytes less than an object grown from {}.
    if (typeof container?.name === 'string' && typeof container.image === 'string') {
      return { name: share(container.name), image: container.image };
    }
    const slim: Container = {};
    if (typeof container?.name === 'string') slim.name = share(container.name);
    if (typeof container?.image === 'string') slim.image = container.image;
    return slim;
  });
}

function slimPodSpec(podSpec: PodSpec): PodSpec {
  const containers = containersOf(podSpec.containers);
  const initContainers = containersOf(podSpec.initContainers);
  const ephemeralContainers = containersOf(podSpec.ephemeralContainers);
  const pullSecrets = Array.isArray(podSpec.imagePullSecrets)
    ? podSpec.imagePullSecrets.flatMap((secret) => (typeof secret?.name === 'string' ? [{ name: share(secret.name) }] : []))
    : [];
  return {
    ...(containers !== undefined && { containers }),
    ...(initContainers !== undefined && { initContainers }),
    ...(ephemeralContainers !== undefined && { ephemeralContainers }),
    ...(pullSecrets.length > 0 && { imagePullSecrets: pullSecrets }),
    ...(typeof podSpec.serviceAccountName === 'string' && { serviceAccountName: share(podSpec.serviceAccountName) }),
  };
}

/** The fields of a workload of `kind` the bridge reads, and nothing else. Idempotent. */
export function slimWorkload(kind: WorkloadKind, object: unknown): Workload {
  const source = object as Workload | null | undefined;
  const metadata = source?.metadata;
  const slim: Workload = {};
  const owned = source !== null && source !== undefined && hasOwner(source);
  if (metadata !== undefined && metadata !== null) {
    const annotations = Object.fromEntries(
      READ_ANNOTATIONS.flatMap((name) =>
        metadata.annotations?.[name] !== undefined ? [[name, metadata.annotations[name]]] : [],
      ),
    );
    slim.metadata = {
      ...(metadata.name !== undefined && { name: metadata.name }),
      ...(metadata.namespace !== undefined && { namespace: share(metadata.namespace) }),
      ...(metadata.uid !== undefined && { uid: metadata.uid }),
      ...(metadata.resourceVersion !== undefined && { resourceVersion: metadata.resourceVersion }),
      ...(owned && { ownerReferences: [{ controller: true }] }),
      // Kept even when empty: whether an object has annotations at all decides how a patch adds one.
      ...(typeof metadata.annotations === 'object' && metadata.annotations !== null && { annotations }),
      ...(Array.isArray(metadata.finalizers) &&
        metadata.finalizers.length > 0 && {
          finalizers: metadata.finalizers.map((finalizer) => (typeof finalizer === 'string' ? share(finalizer) : finalizer)),
        }),
      ...(metadata.deletionTimestamp !== undefined &&
        metadata.deletionTimestamp !== null && { deletionTimestamp: metadata.deletionTimestamp }),
    };
  }
  if (owned && KINDS[kind].ownedLeftToOwner) return slim;
  const podSpec = source ? podSpecOf(kind, source) : undefined;
  if (podSpec !== undefined) slim.spec = nest(KINDS[kind].podSpecPath.slice(1), slimPodSpec(podSpec));
  return slim;
}

/** `{a: {b: value}}` for the path [a, b]. */
function nest(path: readonly string[], value: object): Record<string, unknown> {
  return path.reduceRight<Record<string, unknown>>((inner, key) => ({ [key]: inner }), value as Record<string, unknown>);
}

/** One page of a list: the items and the token of the next page, if any. */
export type ListPage = (continueToken: string | undefined) => Promise<KubernetesListObject<KubernetesObject>>;

/**
 * Lists the whole collection page by page, projecting each page before fetching the next. The
 * pages of one list are one consistent snapshot; its resourceVersion is where the watch starts.
 */
export async function listInPages(project: Projection, page: ListPage): Promise<KubernetesListObject<KubernetesObject>> {
  const items: KubernetesObject[] = [];
  let resourceVersion: string | undefined;
  let token: string | undefined;
  do {
    const list = await page(token);
    resourceVersion ??= list.metadata?.resourceVersion;
    for (const item of list.items ?? []) items.push(project(item) as KubernetesObject);
    token = list.metadata?._continue || undefined;
  } while (token !== undefined);
  return { metadata: { ...(resourceVersion !== undefined && { resourceVersion }) }, items };
}

/** client-node's Watch, handing on each object already projected. */
class ProjectingWatch extends Watch {
  readonly #project: Projection;

  constructor(kubeConfig: KubeConfig, project: Projection) {
    super(kubeConfig);
    this.#project = project;
  }

  override watch(
    path: string,
    queryParams: Record<string, string | number | boolean | undefined>,
    callback: (phase: string, apiObj: unknown, watchObj?: unknown) => void,
    done: (err: unknown) => void,
  ): Promise<AbortController> {
    return super.watch(
      path,
      queryParams,
      (phase, object) => {
        // ERROR carries a Status (its code says 410 Gone), BOOKMARK only a resourceVersion.
        if (phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED') callback(phase, this.#project(object));
        else callback(phase, object);
      },
      done,
    );
  }
}

/**
 * Same contract as client-node's makeInformer (list, then watch; a cache of the collection), with
 * the cache holding projected workloads only: watch events are projected here, and the list comes
 * projected from `listPromiseFn` (listInPages, page by page).
 */
export function makeSlimInformer<T extends KubernetesObject>(
  project: Projection,
  kubeConfig: KubeConfig,
  path: string,
  listPromiseFn: ListPromise<T>,
): Informer<T> & ObjectCache<T> {
  return new ListWatch<T>(path, new ProjectingWatch(kubeConfig, project), listPromiseFn, false);
}
