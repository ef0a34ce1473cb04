// Signatures and attestations that refer to an image travel with it: those the referrers API lists,
// or the "sha256-<hex>" tag-scheme index where a registry has no such API, and cosign's
// "sha256-<hex>.sig/.att/.sbom" tags.

import { repositoryName } from '../reference.ts';
import { pullScope, type HttpResponse } from '../registry/auth.ts';
import { discard } from '../registry/client.ts';
import { RegistryError, readLimited } from '../registry/errors.ts';
import type { Repository } from './blob.ts';
import { digestOf } from './digest.ts';
import type { EmitEvent, FetchedManifest, ImageCopier } from './image.ts';
import { MANIFEST_SIZE_LIMIT, MEDIA_TYPES, parseManifest, type Descriptor } from './manifest.ts';

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

export class ReferrerCopier {
  readonly #images: ImageCopier;

  constructor(images: ImageCopier) {
    this.#images = images;
  }

  /** Asks all at once (one round trip, two when something is there): HEADs cost no pull. */
  async find(source: Repository, digest: string): Promise<FoundReferrers> {
    const schemeTag = digest.replace(':', '-');
    const cosignTags = COSIGN_SUFFIXES.map((suffix) => `${schemeTag}.${suffix}`);
    const [listed, schemeDigest, ...cosignDigests] = await Promise.all([
      this.#listReferrers(source, digest),
      this.#images.tagDigest(source, schemeTag),
      ...cosignTags.map((tag) => this.#images.tagDigest(source, tag)),
    ]);
    const fetchIf = (found: string | undefined) => (found === undefined ? undefined : this.#images.fetchManifest(source, found));
    // The tag-scheme index counts only where the registry has no referrers API.
    const [tagIndex, ...cosignManifests] = await Promise.all([
      fetchIf(listed === undefined ? schemeDigest : undefined),
      ...cosignDigests.map(fetchIf),
    ]);
    const referrers = listed ?? (tagIndex ? parseManifest(tagIndex.bytes, tagIndex.mediaType).manifests : []);
    const cosign = cosignTags.flatMap((tag, i) => (cosignManifests[i] ? [{ tag, manifest: cosignManifests[i] }] : []));
    return { digest, referrers, tagIndex, cosign };
  }

  /** Copies what `find` found into `target`, which holds the image by digest already. */
  async copy(
    found: FoundReferrers,
    source: Repository,
    target: Repository,
    sourceText: string,
    emit: EmitEvent,
    progress: { bytes: number },
  ): Promise<void> {
    const { digest, referrers, tagIndex } = found;
    let targetIndexesReferrers = false;
    for (const referrer of referrers) {
      if (await this.#images.hasManifest(target, referrer.digest)) continue;
      const manifest = await this.#images.fetchManifest(source, referrer.digest);
      const pushed = await this.#images.copyTree(source, target, manifest, referrer.digest, sourceText, emit, progress);
      // OCI 1.1: a registry that indexes referrers itself says so with OCI-Subject.
      if (pushed.headers.get('oci-subject') !== null) targetIndexesReferrers = true;
    }
    if (referrers.length > 0 && !targetIndexesReferrers && !(await this.#supportsReferrersApi(target, digest))) {
      await this.#updateTagIndex(target, digest.replace(':', '-'), referrers, tagIndex);
    }

    for (const { tag, manifest } of found.cosign) {
      if (!(await this.#images.hasManifest(target, manifest.digest))) {
        await this.#images.copyTree(source, target, manifest, manifest.digest, sourceText, emit, progress);
      }
      await this.#images.pushManifest(target, tag, manifest);
    }
  }

  /** The referrers API's list, or undefined where the registry has no referrers API. */
  async #listReferrers(repository: Repository, digest: string): Promise<Descriptor[] | undefined> {
    let response: HttpResponse;
    try {
      response = await this.#images.client.send({
        registry: repository.registry,
        method: 'GET',
        path: `/v2/${repository.repository}/referrers/${digest}`,
        scopes: [pullScope(repository.repository)],
        what: `list referrers of ${repositoryName(repository)}@${digest}`,
        expect: [200, 404],
        headers: { accept: MEDIA_TYPES.ociIndex },
      });
    } catch (error) {
      // 400/405 and the like: a registry that predates the API.
      if (error instanceof RegistryError && error.status >= 400 && error.status < 500) return undefined;
      throw error;
    }
    const type = response.headers.get('content-type') ?? '';
    if (response.status !== 200 || !type.startsWith(MEDIA_TYPES.ociIndex)) {
      await discard(response);
      return undefined;
    }
    const text = await readLimited(response, MANIFEST_SIZE_LIMIT);
    return parseManifest(new TextEncoder().encode(text), MEDIA_TYPES.ociIndex).manifests.slice();
  }

  async #supportsReferrersApi(repository: Repository, digest: string): Promise<boolean> {
    return (await this.#listReferrers(repository, digest)) !== undefined;
  }

  async #fetchIfPresent(repository: Repository, tag: string): Promise<FetchedManifest | undefined> {
    const digest = await this.#images.tagDigest(repository, tag);
    return digest === undefined ? undefined : this.#images.fetchManifest(repository, digest);
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
    const existing = await this.#fetchIfPresent(target, tag);
    if (!existing && sourceIndex) {
      await this.#images.pushManifest(target, tag, sourceIndex);
      return;
    }
    const listed = existing ? parseManifest(existing.bytes, existing.mediaType).manifests : [];
    const known = new Set(listed.map((d) => d.digest));
    const missing = referrers.filter((d) => !known.has(d.digest));
    if (missing.length === 0) return;
    const bytes = new TextEncoder().encode(
      JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPES.ociIndex, manifests: [...listed, ...missing] }),
    );
    await this.#images.pushManifest(target, tag, { bytes, digest: digestOf(bytes), mediaType: MEDIA_TYPES.ociIndex });
  }
}
