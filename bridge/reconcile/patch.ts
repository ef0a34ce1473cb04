// JSON Patch (RFC 6902) for a workload. Every change is guarded by a `test` of the value it was
// computed from, so a patch built from a spec that has changed since fails as a whole and the
// reconciler retries from the current object instead of overwriting someone else's edit.

import { KINDS, type WorkloadKind } from '../workload.ts';

export type JsonPatchOperation =
  | { readonly op: 'test'; readonly path: string; readonly value: unknown }
  | { readonly op: 'add'; readonly path: string; readonly value: unknown }
  | { readonly op: 'replace'; readonly path: string; readonly value: unknown }
  | { readonly op: 'remove'; readonly path: string };

export type ContainerField = 'containers' | 'initContainers' | 'ephemeralContainers';

export interface ImageReplacement {
  /** JSON Pointer to the container's image field. */
  readonly path: string;
  readonly from: string;
  readonly to: string;
}

/** JSON Pointer to a container's image in a workload of `kind`. */
export function imagePath(kind: WorkloadKind, field: ContainerField, index: number): string {
  return `/${KINDS[kind].podSpecPath.join('/')}/${field}/${index}/image`;
}

/** A JSON Pointer token: "~" and "/" escaped (RFC 6901). */
function pointerToken(text: string): string {
  return text.replace(/~/g, '~0').replace(/\//g, '~1');
}

/** How the workload's annotations stand, as read: absent, or present with this value (maybe none) of ours. */
export type AnnotationState =
  | { readonly annotations: 'absent'; readonly resourceVersion: string | undefined }
  | { readonly annotations: 'present'; readonly value: string | undefined };

/**
 * Sets one annotation, guarded like the rest: a replace tests the value it replaces; an add into
 * an annotation map that was absent tests the resourceVersion (adding the whole map would
 * otherwise drop annotations written meanwhile).
 */
export function setAnnotationOperations(name: string, value: string, state: AnnotationState): JsonPatchOperation[] {
  if (state.annotations === 'absent') {
    const guard: JsonPatchOperation[] =
      state.resourceVersion === undefined
        ? []
        : [{ op: 'test', path: '/metadata/resourceVersion', value: state.resourceVersion }];
    return [...guard, { op: 'add', path: '/metadata/annotations', value: { [name]: value } }];
  }
  const path = `/metadata/annotations/${pointerToken(name)}`;
  if (state.value === undefined) return [{ op: 'add', path, value }];
  if (state.value === value) return [];
  return [
    { op: 'test', path, value: state.value },
    { op: 'replace', path, value },
  ];
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
  /** Annotation changes that go with the replacements. */
  readonly annotations?: readonly JsonPatchOperation[];
  /** The workload's finalizers as read; only consulted when `releaseFinalizer`. */
  readonly finalizers: readonly string[];
  readonly finalizer: string;
  readonly releaseFinalizer: boolean;
}

/** One patch: the image replacements, their annotations, then the finalizer removal, applied atomically. */
export function buildWorkloadPatch(patch: WorkloadPatch): JsonPatchOperation[] {
  const operations = patch.replacements.flatMap(replaceImageOperations);
  operations.push(...(patch.annotations ?? []));
  if (patch.releaseFinalizer) operations.push(...removeFinalizerOperations(patch.finalizers, patch.finalizer));
  return operations;
}
