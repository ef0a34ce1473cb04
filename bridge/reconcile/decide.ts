// What a workload still needs, decided from the object alone plus what the bridge knows about
// backups. Pure: no clock, no I/O, so every case is a unit test and the reconciler stays thin.

import { formatReference, isBackupImage, parseReference, type BackupLocation } from '../../functions/contract/index.ts';
import {
  FINALIZER,
  hasOwner,
  KINDS,
  MODE_ANNOTATION,
  MODES,
  OPT_OUT_ANNOTATION,
  ORIGINAL_IMAGES_ANNOTATION,
  podSpecOf,
  PROTECTED_NAMESPACE,
  type Mode,
  type Workload,
  type WorkloadKind,
} from '../workload.ts';
import {
  buildWorkloadPatch,
  imagePath,
  setAnnotationOperations,
  type ContainerField,
  type ImageReplacement,
  type JsonPatchOperation,
} from './patch.ts';

export interface ImageSlot {
  readonly field: ContainerField;
  readonly index: number;
  readonly container: string;
  /** The image exactly as the pod spec holds it. */
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
  | { readonly action: 'none'; readonly mode: Mode; readonly slots: readonly SlotState[] }
  | {
      readonly action: 'reconcile';
      readonly mode: Mode;
      readonly deleting: boolean;
      readonly slots: readonly SlotState[];
      /** Normalised source references to copy, each once. */
      readonly copy: readonly string[];
      readonly replacements: readonly ImageReplacement[];
      readonly releaseFinalizer: boolean;
      /**
       * Sources the workload's finalizer was released without: it is being deleted and they are
       * gone at the source (nothing is left to protect).
       */
      readonly releasedGone: readonly string[];
      readonly patch: readonly JsonPatchOperation[];
      /** True when, once the patch is applied, the workload needs nothing more. */
      readonly settled: boolean;
    };

export interface DecisionContext {
  readonly backup: BackupLocation;
  /** Namespaces never backed up: a finalizer there is released without a copy. */
  readonly ignoredNamespaces: ReadonlySet<string>;
  /** The verified backup (`registry/repo:tag@sha256:…`) of a normalised source, if known. */
  readonly knownBackup: (source: string) => string | undefined;
  /** The mode for workloads that name none and whose namespace names none (DEFAULT_MODE). */
  readonly defaultMode: Mode;
  /** The mode a namespace's annotation names, if any. */
  readonly namespaceMode?: (namespace: string) => Mode | undefined;
  /** Whether the source said a normalised source image is gone (its tag, manifest or repository). */
  readonly goneAtSource?: (source: string) => boolean;
}

/**
 * Every image of the pod spec: init containers first, in the order they start; then a Pod's
 * ephemeral containers, which are backed up but never rewritten.
 */
export function imageSlots(kind: WorkloadKind, workload: Workload): ImageSlot[] {
  const podSpec = podSpecOf(kind, workload);
  const slots: ImageSlot[] = [];
  const fields: ContainerField[] =
    kind === 'Pod' ? ['initContainers', 'containers', 'ephemeralContainers'] : ['initContainers', 'containers'];
  for (const field of fields) {
    (podSpec?.[field] ?? []).forEach((container, index) => {
      if (typeof container?.image !== 'string') return;
      const name = container.name ?? '';
      slots.push({ field, index, container: name, image: container.image, path: imagePath(kind, field, index) });
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

/** A mode annotation's value, when it names one. */
export function modeOf(annotation: string | undefined): Mode | undefined {
  const value = annotation?.trim().toLowerCase();
  return (MODES as readonly string[]).includes(value ?? '') ? (value as Mode) : undefined;
}

/**
 * pin or backup-only: the workload's annotation, else its namespace's, else the default. Kinds
 * whose images the bridge never rewrites (Jobs, Pods) are always backed up only.
 */
export function modeFor(kind: WorkloadKind, workload: Workload, context: DecisionContext): Mode {
  if (!KINDS[kind].pinnable) return 'backup-only';
  const namespace = workload.metadata?.namespace ?? '';
  return modeOf(workload.metadata?.annotations?.[MODE_ANNOTATION]) ?? context.namespaceMode?.(namespace) ?? context.defaultMode;
}

export function decide(kind: WorkloadKind, workload: Workload, context: DecisionContext): Decision {
  const namespace = workload.metadata?.namespace ?? '';
  if (namespace === PROTECTED_NAMESPACE) return { action: 'none', mode: 'backup-only', slots: [] };
  // A Job of a CronJob, a Pod of a ReplicaSet: its owner's template is what gets backed up.
  if (KINDS[kind].ownedLeftToOwner && hasOwner(workload)) return { action: 'none', mode: 'backup-only', slots: [] };

  const finalizers = workload.metadata?.finalizers ?? [];
  const releaseOnly = (): JsonPatchOperation[] =>
    buildWorkloadPatch({ replacements: [], finalizers, finalizer: FINALIZER, releaseFinalizer: hasFinalizer(workload) });
  if (context.ignoredNamespaces.has(namespace)) return { action: 'ignore', reason: 'namespace', patch: releaseOnly() };
  if (isOptedOut(workload)) return { action: 'ignore', reason: 'opt-out', patch: releaseOnly() };

  const mode = modeFor(kind, workload, context);
  const slots = imageSlots(kind, workload).map((slot) => slotState(slot, context));
  const deleting = isBeingDeleted(workload);
  // A workload on its way out without our finalizer will be gone before a copy could matter.
  if (deleting && !hasFinalizer(workload)) return { action: 'none', mode, slots };

  const wanted = [...new Set(slots.flatMap((slot) => (slot.state === 'missing' ? [slot.source] : [])))];
  // A workload being deleted whose missing images are gone at the source has nothing left to
  // protect: holding it would keep it (and its namespace) forever.
  const releasedGone =
    deleting && hasFinalizer(workload) && wanted.length > 0 && wanted.every((source) => context.goneAtSource?.(source) === true)
      ? wanted
      : [];
  const copy = releasedGone.length > 0 ? [] : wanted;
  // The spec of a workload being deleted is left alone: only its release waits for the copies.
  const replacements =
    deleting || mode !== 'pin'
      ? []
      : slots.flatMap((slot) =>
          slot.state === 'known' && slot.slot.field !== 'ephemeralContainers'
            ? [{ path: slot.slot.path, from: slot.slot.image, to: slot.target }]
            : [],
        );
  const releaseFinalizer = hasFinalizer(workload) && copy.length === 0;
  const annotations = replacements.length > 0 ? originalImagesOperations(workload, slots, replacements) : [];
  const patch = buildWorkloadPatch({ replacements, annotations, finalizers, finalizer: FINALIZER, releaseFinalizer });

  if (copy.length === 0 && patch.length === 0) return { action: 'none', mode, slots };
  return {
    action: 'reconcile',
    mode,
    deleting,
    slots,
    copy,
    replacements,
    releaseFinalizer,
    releasedGone,
    patch,
    settled: copy.length === 0,
  };
}

/**
 * Records what each re-pointed container ran before (container name → reference), merged with
 * what earlier patches recorded: what a revert, an uninstall and GitOps tools read.
 */
function originalImagesOperations(
  workload: Workload,
  slots: readonly SlotState[],
  replacements: readonly ImageReplacement[],
): JsonPatchOperation[] {
  const annotations = workload.metadata?.annotations;
  const current = annotations?.[ORIGINAL_IMAGES_ANNOTATION];
  const recorded = parseOriginalImages(current);
  for (const replacement of replacements) {
    const slot = slots.find((candidate) => candidate.slot.path === replacement.path)!.slot;
    recorded[slot.container || `${slot.field}[${slot.index}]`] = replacement.from;
  }
  const state =
    annotations === undefined || annotations === null
      ? { annotations: 'absent' as const, resourceVersion: workload.metadata?.resourceVersion }
      : { annotations: 'present' as const, value: current };
  return setAnnotationOperations(ORIGINAL_IMAGES_ANNOTATION, JSON.stringify(recorded), state);
}

/** The original-images annotation as a map; what does not parse counts as nothing recorded. */
export function parseOriginalImages(value: string | undefined): Record<string, string> {
  if (value === undefined) return {};
  try {
    const parsed: unknown = JSON.parse(value);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return {};
    return Object.fromEntries(Object.entries(parsed).filter((entry): entry is [string, string] => typeof entry[1] === 'string'));
  } catch {
    return {};
  }
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
