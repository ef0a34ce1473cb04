// Copies a manifest and everything under it, children by digest before their parent, then pushes
// it: every platform of an index, attestation manifests, the blobs of each.

import { mapLimit, Semaphore } from '../../lib/semaphore.ts';
import { allSettled } from '../../lib/settle.ts';
import type { HttpResponse } from '../registry/http.ts';
import { parseManifest, type Descriptor } from '../registry/manifest.ts';
import type { FetchedManifest } from '../registry/repository.ts';
import { blobUnits, slotUnits, SMALL_BLOB_BYTES, type BlobCopier, type BlobOutcome } from './blob.ts';
import type { CopyContext } from './context.ts';
import { checkIndexDepth, type CopyLimits } from './limits.ts';

/** A copy into a repository that did not exist when it began. */
export interface FreshRepository {
  /** The blob uploads the copy has started. */
  readonly uploads: Map<string, Promise<BlobOutcome>>;
  /**
   * True when this call created the repository (ECR): it holds nothing. False when the registry
   * only said it does not know the repository, as distribution also says when an interrupted copy
   * left blobs there but no tag: large blobs are then still asked about, so a copy that failed
   * near its end does not upload gigabytes again. Small ones cost less to send again than to ask.
   */
  readonly certainlyEmpty: boolean;
}

export interface TreeCopierOptions {
  readonly blobs: BlobCopier;
  readonly limits: CopyLimits;
  /** Blobs of one manifest copied at once (the process-wide bound is in the BlobCopier). */
  readonly blobConcurrency: number;
  /** Small blobs (see SMALL_BLOB_BYTES) that share one of those slots. */
  readonly smallBlobsPerSlot: number;
}

export class TreeCopier {
  readonly #options: TreeCopierOptions;

  constructor(options: TreeCopierOptions) {
    this.#options = options;
  }

  /**
   * Copies `manifest` and what it refers to, then pushes it under `reference` (a tag or its
   * digest). A child the backup already holds is skipped whole. With `fresh` (the target
   * repository did not exist when the copy began) manifests and small blobs are not asked about
   * first: registries link blobs and manifests per repository, so none can be there unless a copy
   * put it there, and a blob shared by several manifests of the image is uploaded once.
   */
  async copy(
    context: CopyContext,
    manifest: FetchedManifest,
    reference: string,
    fresh?: FreshRepository,
    depth = 0,
  ): Promise<HttpResponse> {
    const { source, target } = context;
    const parsed = parseManifest(manifest.bytes, manifest.mediaType);
    if (parsed.manifests.length > 0) checkIndexDepth(depth, this.#options.limits, `${source}@${manifest.digest}`);
    const children = [...new Map(parsed.manifests.map((child) => [child.digest, child])).values()];
    await mapLimit(children, 2, (child: Descriptor) =>
      context.once(child.digest, async () => {
        if (fresh === undefined && (await target.hasManifest(child.digest))) return;
        const fetched = await source.getManifest(child.digest);
        await this.copy(context, fetched, child.digest, fresh, depth + 1);
      }),
    );
    const { blobs, blobConcurrency, smallBlobsPerSlot } = this.#options;
    const slots = new Semaphore(slotUnits(blobConcurrency, smallBlobsPerSlot));
    const copyBlob = async (blob: Descriptor) => {
      const underway = fresh?.uploads.get(blob.digest);
      if (underway !== undefined) {
        await underway; // another manifest of this image uploads it: wait, count it once
        return;
      }
      const absent = fresh !== undefined && (fresh.certainlyEmpty || blob.size < SMALL_BLOB_BYTES);
      const copying = blobs.copy(context, blob, { absent });
      fresh?.uploads.set(blob.digest, copying);
      if ((await copying) === 'uploaded') context.uploaded(blob.size);
    };
    let failed = false;
    await allSettled(
      parsed.blobs.map((blob) =>
        slots.run(
          async () => {
            if (failed) return; // the image has failed already: blobs still waiting are not worth copying
            await copyBlob(blob).catch((error: unknown) => {
              failed = true;
              throw error;
            });
          },
          blobUnits(blob.size, smallBlobsPerSlot),
        ),
      ),
    );
    return target.putManifest(reference, manifest);
  }
}
