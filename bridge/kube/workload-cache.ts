// The informers' cache holds each workload reduced to the fields the bridge reads (the Workload
// type in bridge/workload.ts): identity and version, finalizers, deletion, the opt-out annotation, and
// the name and image of each container and init container, in order. A Deployment as the API
// server serves it is several KiB (managedFields, the last-applied annotation, probes, env,
// status); what the bridge decides from is a few hundred bytes. With 10,000 workloads of 4.7 KB
// that is 47 MB of JSON, more as objects, against a few MB (the bridge's figures: docs/scale.md).
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
import { OPT_OUT_ANNOTATION, type Container, type Workload } from '../workload.ts';

/** Objects per list page: client-go's pager default. */
export const LIST_PAGE_SIZE = 500;

function containersOf(list: unknown): Container[] | undefined {
  if (!Array.isArray(list)) return undefined;
  // Every entry is kept, even an odd one, so that indexes (JSON Patch paths) stay those of the object.
  return list.map((container: Container | null | undefined) => {
    const slim: Container = {};
    if (typeof container?.name === 'string') slim.name = container.name;
    if (typeof container?.image === 'string') slim.image = container.image;
    return slim;
  });
}

/** The fields of a Deployment or DaemonSet the bridge reads, and nothing else. Idempotent. */
export function slimWorkload(object: unknown): Workload {
  const source = object as Workload | null | undefined;
  const metadata = source?.metadata;
  const slim: Workload = {};
  if (metadata !== undefined && metadata !== null) {
    const optOut = metadata.annotations?.[OPT_OUT_ANNOTATION];
    slim.metadata = {
      ...(metadata.name !== undefined && { name: metadata.name }),
      ...(metadata.namespace !== undefined && { namespace: metadata.namespace }),
      ...(metadata.uid !== undefined && { uid: metadata.uid }),
      ...(metadata.resourceVersion !== undefined && { resourceVersion: metadata.resourceVersion }),
      ...(optOut !== undefined && { annotations: { [OPT_OUT_ANNOTATION]: optOut } }),
      ...(Array.isArray(metadata.finalizers) && metadata.finalizers.length > 0 && { finalizers: [...metadata.finalizers] }),
      ...(metadata.deletionTimestamp !== undefined &&
        metadata.deletionTimestamp !== null && { deletionTimestamp: metadata.deletionTimestamp }),
    };
  }
  const podSpec = source?.spec?.template?.spec;
  if (podSpec !== undefined && podSpec !== null) {
    const containers = containersOf(podSpec.containers);
    const initContainers = containersOf(podSpec.initContainers);
    slim.spec = {
      template: {
        spec: {
          ...(containers !== undefined && { containers }),
          ...(initContainers !== undefined && { initContainers }),
        },
      },
    };
  }
  return slim;
}

/** One page of a list: the items and the token of the next page, if any. */
export type ListPage = (continueToken: string | undefined) => Promise<KubernetesListObject<KubernetesObject>>;

/**
 * Lists the whole collection page by page, projecting each page before fetching the next. The
 * pages of one list are one consistent snapshot; its resourceVersion is where the watch starts.
 */
export async function listInPages(page: ListPage): Promise<KubernetesListObject<KubernetesObject>> {
  const items: KubernetesObject[] = [];
  let resourceVersion: string | undefined;
  let token: string | undefined;
  do {
    const list = await page(token);
    resourceVersion ??= list.metadata?.resourceVersion;
    for (const item of list.items ?? []) items.push(slimWorkload(item) as KubernetesObject);
    token = list.metadata?._continue || undefined;
  } while (token !== undefined);
  return { metadata: { ...(resourceVersion !== undefined && { resourceVersion }) }, items };
}

/** client-node's Watch, handing on each object already projected. */
class ProjectingWatch extends Watch {
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
        if (phase === 'ADDED' || phase === 'MODIFIED' || phase === 'DELETED') callback(phase, slimWorkload(object));
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
  kubeConfig: KubeConfig,
  path: string,
  listPromiseFn: ListPromise<T>,
  labelSelector?: string,
): Informer<T> & ObjectCache<T> {
  return new ListWatch<T>(path, new ProjectingWatch(kubeConfig), listPromiseFn, false, labelSelector);
}
