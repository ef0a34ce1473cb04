// What a workload still needs, decided from the object alone plus what the bridge knows about
// backups. Pure: no clock, no I/O, so every case is a unit test and the reconciler stays thin.

import { isBackupImage, type BackupLocation } from '../../functions/contract/index.ts';
import { formatReference, parseReference } from '../../functions/contract/index.ts';
import { FINALIZER, OPT_OUT_ANNOTATION, type Workload } from '../workload.ts';
import { buildWorkloadPatch, imagePath, type ContainerField, type ImageReplacement, type JsonPatchOperation } from './patch.ts';

export interface ImageSlot {
  readonly field: ContainerField;
  readonly index: number;
  readonly container: string;
  /** The image exactly as the pod template holds it. */
  readonly image: string;
  /** JSON Pointer to this image in the workload. */
  readonly path: string;
}

export type SlotState =
  /** Already points into the backup namespace: nothing to copy, nothing to change. */
  | { readonly state: 'backup'; readonly slot: ImageSlot }
  /** A verified backup exists: the slot can be pointed at it. */
  | { readonly state: 'known'; readonly slot: ImageSlot; readonly source: string; readonly target: string }
  /** No backup known yet: the image must be copied. */
  | { readonly state: 'missing'; readonly slot: ImageSlot; readonly source: string }
  /** Not a valid reference: nobody can pull it, so it can be neither copied nor protected. */
  | { readonly state: 'invalid'; readonly slot: ImageSlot; readonly error: string };

export type IgnoreReason = 'namespace' | 'opt-out';

export type Decision =
  /** Not ours to back up; the patch (possibly empty) only releases our finalizer. */
  | { readonly action: 'ignore'; readonly reason: IgnoreReason; readonly patch: readonly JsonPatchOperation[] }
  /** Nothing to copy and nothing to patch. */
  | { readonly action: 'none'; readonly slots: readonly SlotState[] }
  | {
      readonly action: 'reconcile';
      readonly deleting: boolean;
      readonly slots: readonly SlotState[];
      /** Normalised source references to copy, each once. */
      readonly copy: readonly string[];
      readonly replacements: readonly ImageReplacement[];
      readonly releaseFinalizer: boolean;
      readonly patch: readonly JsonPatchOperation[];
      /** True when, once the patch is applied, the workload needs nothing more. */
      readonly settled: boolean;
    };

export interface DecisionContext {
  readonly backup: BackupLocation;
  /** Namespaces never backed up; kube-system is always among them (the config adds it). */
  readonly ignoredNamespaces: ReadonlySet<string>;
  /** The verified backup (`registry/repo:tag@sha256:…`) of a normalised source, if known. */
  readonly knownBackup: (source: string) => string | undefined;
}

/** Every image of the pod template: init containers first, in the order they start. */
export function imageSlots(workload: Workload): ImageSlot[] {
  const podSpec = workload.spec?.template?.spec;
  const slots: ImageSlot[] = [];
  for (const field of ['initContainers', 'containers'] as const) {
    (podSpec?.[field] ?? []).forEach((container, index) => {
      if (typeof container?.image !== 'string') return;
      slots.push({ field, index, container: container.name ?? '', image: container.image, path: imagePath(field, index) });
    });
  }
  return slots;
}

export function isOptedOut(workload: Workload): boolean {
  return workload.metadata?.annotations?.[OPT_OUT_ANNOTATION]?.trim().toLowerCase() === 'true';
}

export function isBeingDeleted(workload: Workload): boolean {
  const timestamp = workload.metadata?.deletionTimestamp;
  return timestamp !== undefined && timestamp !== null && timestamp !== '';
}

export function hasFinalizer(workload: Workload): boolean {
  return (workload.metadata?.finalizers ?? []).includes(FINALIZER);
}

export function decide(workload: Workload, context: DecisionContext): Decision {
  const finalizers = workload.metadata?.finalizers ?? [];
  const releaseOnly = (): JsonPatchOperation[] =>
    buildWorkloadPatch({ replacements: [], finalizers, finalizer: FINALIZER, releaseFinalizer: hasFinalizer(workload) });

  if (context.ignoredNamespaces.has(workload.metadata?.namespace ?? '')) {
    return { action: 'ignore', reason: 'namespace', patch: releaseOnly() };
  }
  if (isOptedOut(workload)) return { action: 'ignore', reason: 'opt-out', patch: releaseOnly() };

  const slots = imageSlots(workload).map((slot) => slotState(slot, context));
  const deleting = isBeingDeleted(workload);
  // A workload on its way out without our finalizer will be gone before a copy could matter.
  if (deleting && !hasFinalizer(workload)) return { action: 'none', slots };

  const copy = [...new Set(slots.flatMap((slot) => (slot.state === 'missing' ? [slot.source] : [])))];
  // The spec of a workload being deleted is left alone: only its release waits for the copies.
  const replacements = deleting
    ? []
    : slots.flatMap((slot) => (slot.state === 'known' ? [{ path: slot.slot.path, from: slot.slot.image, to: slot.target }] : []));
  const releaseFinalizer = hasFinalizer(workload) && copy.length === 0;
  const patch = buildWorkloadPatch({ replacements, finalizers, finalizer: FINALIZER, releaseFinalizer });

  if (copy.length === 0 && patch.length === 0) return { action: 'none', slots };
  return { action: 'reconcile', deleting, slots, copy, replacements, releaseFinalizer, patch, settled: copy.length === 0 };
}

function slotState(slot: ImageSlot, context: DecisionContext): SlotState {
  let source: string;
  try {
    const reference = parseReference(slot.image);
    if (isBackupImage(reference, context.backup)) return { state: 'backup', slot };
    source = formatReference(reference);
  } catch (error) {
    return { state: 'invalid', slot, error: (error as Error).message };
  }
  const target = context.knownBackup(source);
  return target === undefined ? { state: 'missing', slot, source } : { state: 'known', slot, source, target };
}
