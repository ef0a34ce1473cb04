// JSON Patch (RFC 6902) for a workload. Every change is guarded by a `test` of the value it was
// computed from, so a patch built from a spec that has changed since fails as a whole and the
// reconciler retries from the current object instead of overwriting someone else's edit.

export type JsonPatchOperation =
  | { readonly op: 'test'; readonly path: string; readonly value: unknown }
  | { readonly op: 'replace'; readonly path: string; readonly value: unknown }
  | { readonly op: 'remove'; readonly path: string };

export type ContainerField = 'containers' | 'initContainers';

export interface ImageReplacement {
  /** JSON Pointer to the container's image field. */
  readonly path: string;
  readonly from: string;
  readonly to: string;
}

export function imagePath(field: ContainerField, index: number): string {
  return `/spec/template/spec/${field}/${index}/image`;
}

export function replaceImageOperations(replacement: ImageReplacement): JsonPatchOperation[] {
  return [
    { op: 'test', path: replacement.path, value: replacement.from },
    { op: 'replace', path: replacement.path, value: replacement.to },
  ];
}

/**
 * Removes every occurrence of `finalizer`, highest index first so that each removal leaves the
 * indices of the ones still to remove unchanged.
 */
export function removeFinalizerOperations(finalizers: readonly string[], finalizer: string): JsonPatchOperation[] {
  const operations: JsonPatchOperation[] = [];
  for (let index = finalizers.length - 1; index >= 0; index--) {
    if (finalizers[index] !== finalizer) continue;
    const path = `/metadata/finalizers/${index}`;
    operations.push({ op: 'test', path, value: finalizer }, { op: 'remove', path });
  }
  return operations;
}

export interface WorkloadPatch {
  readonly replacements: readonly ImageReplacement[];
  /** The workload's finalizers as read; only consulted when `releaseFinalizer`. */
  readonly finalizers: readonly string[];
  readonly finalizer: string;
  readonly releaseFinalizer: boolean;
}

/** One patch: the image replacements, then the finalizer removal, applied atomically. */
export function buildWorkloadPatch(patch: WorkloadPatch): JsonPatchOperation[] {
  const operations = patch.replacements.flatMap(replaceImageOperations);
  if (patch.releaseFinalizer) operations.push(...removeFinalizerOperations(patch.finalizers, patch.finalizer));
  return operations;
}
