// The way out: releases every finalizer the controller put its name on and, when asked, points
// every workload it pinned back at the images it ran before (the original-images annotation),
// in every namespace (kube-system included: the controller never wrote there, but a user may
// have put the finalizer there). Run with the user's own credentials, after the bridge is
// stopped (else it would pin again): `scripts/uninstall` does both, then removes the controller.
//
//   node bridge/main.ts uninstall [--restore-images] [--dry-run]      (KUBECONFIG as for kubectl)
//
// Each patch is guarded like the bridge's (`test` of what it changes): a workload changed
// meanwhile is skipped and reported, never overwritten.

import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { isBackupImage, parseReference, type BackupLocation } from '../functions/contract/index.ts';
import { describeError } from '../lib/errors.ts';
import { workloadApis, type WorkloadApi } from './kube/api.ts';
import { imageSlots, parseOriginalImages } from './reconcile/decide.ts';
import { removeFinalizerOperations, type JsonPatchOperation } from './reconcile/patch.ts';
import { FINALIZER, ORIGINAL_IMAGES_ANNOTATION, WORKLOAD_KINDS, type Workload, type WorkloadKind } from './workload.ts';

export interface UninstallOptions {
  readonly kubeConfig: KubeConfig;
  readonly logger: Logger;
  /** Point pinned workloads back at their original images. */
  readonly restoreImages: boolean;
  /** Where the backups live: only images there are restored. Undefined: any image pinned by digest. */
  readonly backup?: BackupLocation;
  readonly dryRun?: boolean;
  /** The kinds to look at (default every kind the controller handles). */
  readonly kinds?: readonly WorkloadKind[];
}

export interface UninstallSummary {
  readonly released: number;
  readonly restored: number;
  /** Workloads that changed while this ran, or refused the patch: left as they are. */
  readonly skipped: readonly string[];
}

export async function uninstall(options: UninstallOptions): Promise<UninstallSummary> {
  const { logger } = options;
  const apis = workloadApis(options.kubeConfig, options.kinds ?? WORKLOAD_KINDS);
  let released = 0;
  let restored = 0;
  const skipped: string[] = [];
  for (const kind of options.kinds ?? WORKLOAD_KINDS) {
    const api = apis[kind]!;
    for await (const workload of everyObject(api)) {
      const name = `${kind} ${workload.metadata?.namespace}/${workload.metadata?.name}`;
      const { operations, releases, restores } = undoOperations(kind, workload, options);
      if (operations.length === 0) continue;
      if (options.dryRun) {
        logger.info({ workload: name, releases, restores }, 'would undo');
        continue;
      }
      try {
        await api.patch(workload.metadata!.namespace!, workload.metadata!.name!, operations);
        released += releases ? 1 : 0;
        restored += restores;
        logger.info({ workload: name, finalizerReleased: releases, imagesRestored: restores }, 'undone');
      } catch (error) {
        skipped.push(name);
        logger.warn({ workload: name, error: describeError(error) }, 'left as it is: it changed meanwhile or refused the patch');
      }
    }
  }
  return { released, restored, skipped };
}

/** What undoing the controller's work on one workload takes: its finalizer, and maybe its images. */
export function undoOperations(
  kind: WorkloadKind,
  workload: Workload,
  options: Pick<UninstallOptions, 'restoreImages' | 'backup'>,
): { operations: JsonPatchOperation[]; releases: boolean; restores: number } {
  const operations: JsonPatchOperation[] = [];
  let restores = 0;
  const annotation = workload.metadata?.annotations?.[ORIGINAL_IMAGES_ANNOTATION];
  if (options.restoreImages && annotation !== undefined) {
    const originals = parseOriginalImages(annotation);
    for (const slot of imageSlots(kind, workload)) {
      const original = originals[slot.container || `${slot.field}[${slot.index}]`];
      if (original === undefined || original === slot.image || !isPinnedBackup(slot.image, options.backup)) continue;
      operations.push({ op: 'test', path: slot.path, value: slot.image }, { op: 'replace', path: slot.path, value: original });
      restores++;
    }
    const path = `/metadata/annotations/${ORIGINAL_IMAGES_ANNOTATION.replace(/~/g, '~0').replace(/\//g, '~1')}`;
    operations.push({ op: 'test', path, value: annotation }, { op: 'remove', path });
  }
  const finalizers = workload.metadata?.finalizers ?? [];
  const releases = finalizers.includes(FINALIZER);
  operations.push(...removeFinalizerOperations(finalizers, FINALIZER));
  return { operations, releases, restores };
}

/** A backup the bridge pinned: under the backup location when it is known, and by digest. */
function isPinnedBackup(image: string, backup: BackupLocation | undefined): boolean {
  try {
    const reference = parseReference(image);
    return reference.digest !== undefined && (backup === undefined || isBackupImage(reference, backup));
  } catch {
    return false;
  }
}

async function* everyObject(api: WorkloadApi): AsyncGenerator<Workload> {
  let token: string | undefined;
  do {
    const page = await api.list({ limit: 500, ...(token !== undefined && { continue: token }) });
    for (const item of page.items ?? []) yield item as Workload;
    token = page.metadata?._continue || undefined;
  } while (token !== undefined);
}
