// Copies one image, digest-exact: every platform of an index, attestation manifests, the blobs of
// each, children before parents, then the signatures and attestations that refer to it. Skipped in
// one HEAD when the backup already holds the digest.

import { describeError } from '../../lib/errors.ts';
import {
  backupReference,
  formatReference,
  isBackupImage,
  parseReference,
  repositoryName,
  type BackupLocation,
  type CloneResult,
  type ImageReference,
} from '../contract/index.ts';
import type { Logger } from '../log.ts';
import type { Access, FetchedManifest, Repository, RepositoryName } from '../registry/repository.ts';
import type { BlobOutcome } from './blob.ts';
import { CopyContext, type EmitEvent } from './context.ts';
import { noReferrers, ReferrerCopier } from './referrers.ts';
import type { TreeCopier } from './tree.ts';

export interface ImageCopierOptions {
  /** A handle on a repository, with the access a copy needs there. */
  readonly repository: (name: RepositoryName, access: Access) => Repository;
  readonly tree: TreeCopier;
  readonly backup: BackupLocation;
  readonly logger: Logger;
  /**
   * Runs before anything is pushed to a backup repository (ECR creates it); true when it has just
   * created the repository, which is then known to be empty.
   */
  readonly prepareTarget?: (repository: string) => Promise<boolean | void>;
  readonly now?: () => number;
}

/** Where the copy starts: see #startingPoint. */
interface StartingPoint {
  readonly root: FetchedManifest;
  readonly held: boolean;
  readonly empty: boolean;
  readonly created: boolean;
}

export class ImageCopier {
  readonly #options: ImageCopierOptions;
  readonly #now: () => number;
  readonly #referrers: ReferrerCopier;
  /** Copies in flight, by source: concurrent requests for one image share one copy. */
  readonly #inFlight = new Map<string, { promise: Promise<CloneResult>; listeners: Set<EmitEvent> }>();

  constructor(options: ImageCopierOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#referrers = new ReferrerCopier(options.tree);
  }

  /** Copies one image into the backup; never throws: a failure is a `failed` result. */
  async copy(input: string, emit?: EmitEvent): Promise<CloneResult> {
    const started = this.#now();
    let source: ImageReference;
    try {
      source = parseReference(input);
    } catch (error) {
      return { source: String(input), status: 'failed', error: describeError(error), ms: 0 };
    }
    const key = formatReference(source);
    const running = this.#inFlight.get(key);
    if (running) {
      if (emit) running.listeners.add(emit);
      const result = await running.promise;
      return { ...result, ms: this.#now() - started };
    }
    const listeners = new Set<EmitEvent>(emit ? [emit] : []);
    const fanOut: EmitEvent = (event) => listeners.forEach((listener) => listener(event));
    const promise = this.#copyReference(source, fanOut, started).finally(() => this.#inFlight.delete(key));
    this.#inFlight.set(key, { promise, listeners });
    return promise;
  }

  async #copyReference(source: ImageReference, emit: EmitEvent, started: number): Promise<CloneResult> {
    const { backup, logger } = this.#options;
    const sourceText = formatReference(source);
    emit({ type: 'image', source: sourceText, status: 'started' });
    logger.info({ image: sourceText }, 'clone started');
    let result: CloneResult;
    try {
      result = isBackupImage(source, backup) ? await this.#alreadyBackup(source) : await this.#backUp(source, emit);
    } catch (error) {
      result = { source: sourceText, status: 'failed', error: describeError(error), ms: 0 };
    }
    result = { ...result, ms: this.#now() - started };
    if (result.status === 'failed') {
      logger.warn({ image: sourceText, error: result.error, ms: result.ms }, 'clone failed');
    } else {
      const { target, digest, status, bytes, ms } = result;
      logger.info({ image: sourceText, target, digest, status, bytes, ms }, 'clone finished');
    }
    emit({ type: 'result', result });
    return result;
  }

  /** A source under the backup namespace is a backup already: only its digest is looked up. */
  async #alreadyBackup(source: ImageReference): Promise<CloneResult> {
    const repository = this.#options.repository(source, 'pull');
    const digest = source.digest ?? (await repository.resolve(source.tag!)).digest;
    return {
      source: formatReference(source),
      target: `${repositoryName(source)}${source.tag ? `:${source.tag}` : ''}@${digest}`,
      digest,
      status: 'exists',
      ms: 0,
    };
  }

  async #backUp(source: ImageReference, emit: EmitEvent): Promise<CloneResult> {
    const sourceText = formatReference(source);
    const targetRef = backupReference(source, this.#options.backup);
    const from = this.#options.repository(source, 'pull');
    const to = this.#options.repository(targetRef, 'push');
    const tag = targetRef.tag!;

    // The tag is pushed last, after the referrers: a tag on the digest means the copy is complete,
    // so an interrupted copy is finished by the next request. Asked while the source's digest is.
    const tagged = to.tagDigest(tag);
    tagged.catch(() => {}); // awaited below, unless resolving the source fails first

    let digest = source.digest;
    let sourceManifest: FetchedManifest | undefined; // when the registry named no digest and a GET told
    if (digest === undefined) {
      const resolved = await from.resolve(source.tag!);
      digest = resolved.digest;
      sourceManifest = resolved.manifest;
    }
    const targetText = `${repositoryName(targetRef)}:${tag}@${digest}`;
    if ((await tagged) === digest) {
      return { source: sourceText, target: targetText, digest, status: 'exists', bytes: 0, ms: 0 };
    }
    // What refers to the image (in the source) and what the backup holds, asked side by side.
    const [referrers, start] = await Promise.all([
      this.#referrers.find(from, digest),
      this.#startingPoint(from, to, digest, sourceManifest),
    ]);
    const context = new CopyContext({ source: from, target: to, image: sourceText, emit });
    // With nothing to copy between the image and its tag, the image is pushed once, by tag.
    const pushAs = noReferrers(referrers) ? tag : digest;
    if (!start.held) {
      const fresh = start.empty ? { uploads: new Map<string, Promise<BlobOutcome>>(), certainlyEmpty: start.created } : undefined;
      await this.#options.tree.copy(context, start.root, pushAs, fresh);
    }
    await this.#referrers.copy(referrers, context);
    if (start.held || pushAs !== tag) await to.putManifest(tag, start.root);
    return {
      source: sourceText,
      target: targetText,
      digest,
      status: start.held ? 'exists' : 'copied',
      bytes: context.bytesUploaded,
      ms: 0,
    };
  }

  /**
   * Where the copy starts: the image's manifest, and whether the backup repository holds the image
   * by digest already (`held`: then the manifest is the backup's, no pull spent) or nothing at all
   * (`empty`: ECR has just `created` it, or the registry does not know it).
   */
  async #startingPoint(
    source: Repository,
    target: Repository,
    digest: string,
    known: FetchedManifest | undefined,
  ): Promise<StartingPoint> {
    const created = (await this.#options.prepareTarget?.(target.repository)) === true;
    if (!created && (await target.hasManifest(digest))) {
      return { root: await target.getManifest(digest), held: true, empty: false, created };
    }
    const [root, exists] = await Promise.all([known ?? source.getManifest(digest), created ? false : target.exists()]);
    return { root, held: false, empty: !exists, created };
  }
}
