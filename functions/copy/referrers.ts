// Signatures and attestations that refer to an image travel with it: those the referrers API lists,
// or the "sha256-<hex>" tag-scheme index where a registry has no such API, and cosign's
// "sha256-<hex>.sig/.att/.sbom" tags.

import { allSettled } from '../../lib/settle.ts';
import { digestOf } from '../registry/digest.ts';
import { MEDIA_TYPES, parseManifest, type Descriptor } from '../registry/manifest.ts';
import type { FetchedManifest, Repository } from '../registry/repository.ts';
import type { CopyContext } from './context.ts';
import type { TreeCopier } from './tree.ts';

const COSIGN_SUFFIXES = ['sig', 'att', 'sbom'];

/** What refers to an image in its source repository, found before the copy. */
export interface FoundReferrers {
  /** The image's digest. */
  readonly digest: string;
  /** Listed by the referrers API, or by the tag-scheme index. */
  readonly referrers: readonly Descriptor[];
  /** The source's tag-scheme index, where it has one and no referrers API. */
  readonly tagIndex: FetchedManifest | undefined;
  /** cosign's signature, attestation and SBOM tags present in the source. */
  readonly cosign: ReadonlyArray<{ readonly tag: string; readonly manifest: FetchedManifest }>;
}

/** True when nothing refers to the image: it can be pushed under its tag at once. */
export function noReferrers(found: FoundReferrers): boolean {
  return found.referrers.length === 0 && found.cosign.length === 0;
}

/** The tag-scheme tag of a digest: "sha256-<hex>". */
export function referrersTag(digest: string): string {
  return digest.replace(':', '-');
}

export class ReferrerCopier {
  readonly #tree: TreeCopier;

  constructor(tree: TreeCopier) {
    this.#tree = tree;
  }

  /** Asks all at once (one round trip, two when something is there): HEADs cost no pull. */
  async find(source: Repository, digest: string): Promise<FoundReferrers> {
    const schemeTag = referrersTag(digest);
    const cosignTags = COSIGN_SUFFIXES.map((suffix) => `${schemeTag}.${suffix}`);
    const [listed, schemeDigest, ...cosignDigests] = await allSettled([
      source.referrers(digest),
      source.tagDigest(schemeTag),
      ...cosignTags.map((tag) => source.tagDigest(tag)),
    ]);
    const fetchIf = (found: string | undefined) => (found === undefined ? undefined : source.getManifest(found));
    // The tag-scheme index counts only where the registry has no referrers API.
    const [tagIndex, ...cosignManifests] = await allSettled([
      fetchIf(listed === undefined ? schemeDigest : undefined),
      ...cosignDigests.map(fetchIf),
    ]);
    const referrers = listed ?? (tagIndex ? parseManifest(tagIndex.bytes, tagIndex.mediaType).manifests : []);
    const cosign = cosignTags.flatMap((tag, i) => (cosignManifests[i] ? [{ tag, manifest: cosignManifests[i] }] : []));
    return { digest, referrers, tagIndex, cosign };
  }

  /** Copies what `find` found into the context's target, which holds the image by digest already. */
  async copy(found: FoundReferrers, context: CopyContext): Promise<void> {
    const { source, target } = context;
    const { digest, referrers, tagIndex } = found;
    let targetIndexesReferrers = false;
    for (const referrer of referrers) {
      if (await target.hasManifest(referrer.digest)) continue;
      const manifest = await source.getManifest(referrer.digest);
      const pushed = await this.#tree.copy(context, manifest, referrer.digest);
      // OCI 1.1: a registry that indexes referrers itself says so with OCI-Subject.
      if (pushed.headers.get('oci-subject') !== null) targetIndexesReferrers = true;
    }
    if (referrers.length > 0 && !targetIndexesReferrers && (await target.referrers(digest)) === undefined) {
      await this.#updateTagIndex(target, referrersTag(digest), referrers, tagIndex);
    }

    for (const { tag, manifest } of found.cosign) {
      if (!(await target.hasManifest(manifest.digest))) await this.#tree.copy(context, manifest, manifest.digest);
      await target.putManifest(tag, manifest);
    }
  }

  /**
   * Keeps the target's tag-scheme index listing every referrer: the source's exact index when the
   * target has none, else the union of both.
   */
  async #updateTagIndex(
    target: Repository,
    tag: string,
    referrers: readonly Descriptor[],
    sourceIndex: FetchedManifest | undefined,
  ): Promise<void> {
    const existingDigest = await target.tagDigest(tag);
    const existing = existingDigest === undefined ? undefined : await target.getManifest(existingDigest);
    if (!existing && sourceIndex) {
      await target.putManifest(tag, sourceIndex);
      return;
    }
    const listed = existing ? parseManifest(existing.bytes, existing.mediaType).manifests : [];
    const known = new Set(listed.map((d) => d.digest));
    const missing = referrers.filter((d) => !known.has(d.digest));
    if (missing.length === 0) return;
    const bytes = new TextEncoder().encode(
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [...listed, ...missing] }),
    );
    await target.putManifest(tag, { bytes, digest: digestOf(bytes), mediaType: MEDIA_TYPES.ociIndex });
  }
}
