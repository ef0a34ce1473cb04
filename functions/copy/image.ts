// Copies one image, digest-exact: every platform of an index, attestation manifests, the blobs of
// each, children before parents, then the signatures and attestations that refer to it. Skipped in
// one HEAD when the backup already holds the digest.

import { createHash } from 'node:crypto';
import { describeError } from '../../lib/errors.ts';
import { allSettled } from '../../lib/settle.ts';
import { errorDetail, NotFoundError, PermanentError, RegistryError } from '../registry/errors.ts';
import {
  backupReference,
  FAILURE_REASONS,
  formatReference,
  isBackupImage,
  parseReference,
  repositoryName,
  type BackupLocation,
  imageOfRequest,
  type CloneResult,
  type ImageReference,
  type ImageRequest,
  type RegistryCredentials,
} from '../contract/index.ts';
import type { Logger } from '../log.ts';
import type { Access, FetchedManifest, ManifestBudget, Repository, RepositoryName } from '../registry/repository.ts';
import type { BlobOutcome } from './blob.ts';
import { CopyContext, type EmitEvent } from './context.ts';
import { CopyAbortedError, ImageBudget, type CopyLimits } from './limits.ts';
import { noReferrers, ReferrerCopier } from './referrers.ts';
import type { TreeCopier } from './tree.ts';

/** What binds every request of one copy: when it ends, and what it may read. */
export interface CopyScope {
  readonly signal: AbortSignal;
  readonly budget: ManifestBudget;
}

export interface ImageCopierOptions {
  /**
   * A handle on a repository, with the access a copy needs there, its requests bound to the copy;
   * with `credentials`, the request's own for that repository's registry.
   */
  readonly repository: (name: RepositoryName, access: Access, scope: CopyScope, credentials?: RegistryCredentials) => Repository;
  readonly tree: TreeCopier;
  readonly backup: BackupLocation;
  readonly limits: CopyLimits;
  /** Whether images may be copied from a registry (SOURCE_REGISTRIES); default: any. */
  readonly sourceAllowed?: (registry: string) => boolean;
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
  readonly #inFlight = new Map<string, InFlightCopy>();

  constructor(options: ImageCopierOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#referrers = new ReferrerCopier(options.tree);
  }

  /**
   * Copies one image into the backup; never throws: a failure is a `failed` result. `signal`: the
   * caller stopped waiting (a client gone); a copy nobody waits for any more is cancelled. A
   * caller without one (a callback job) waits until the copy ends.
   */
  async copy(request: ImageRequest, emit?: EmitEvent, signal?: AbortSignal): Promise<CloneResult> {
    const started = this.#now();
    const input = imageOfRequest(request);
    const credentials = typeof request === 'string' ? undefined : request.credentials;
    let source: ImageReference;
    try {
      source = parseReference(input);
    } catch (error) {
      return { source: String(input), status: 'failed', error: describeError(error), ms: 0 };
    }
    const name = formatReference(source);
    // Requests share a copy only with the same credentials: one whose credentials could not pull
    // the image must not ride on another's.
    const key = credentials === undefined ? name : `${name} ${credentialsKey(credentials)}`;
    const running = this.#inFlight.get(key);
    const copy = running ?? new InFlightCopy(name, this.#options.limits.imageDeadlineMs);
    // Waiting (and listening) first, so the new copy's first event reaches this caller too.
    const waiting = copy.wait(emit, signal);
    if (running === undefined) {
      this.#inFlight.set(key, copy);
      copy.run(() => this.#copyReference(source, copy, started, credentials)).finally(() => this.#inFlight.delete(key));
    }
    const result = await waiting;
    return result === undefined
      ? { source: name, status: 'failed', error: 'cancelled: the request ended before the copy', ms: this.#now() - started }
      : { ...result, ms: this.#now() - started };
  }

  async #copyReference(
    source: ImageReference,
    copy: InFlightCopy,
    started: number,
    credentials: RegistryCredentials | undefined,
  ): Promise<CloneResult> {
    const { backup, logger } = this.#options;
    const sourceText = formatReference(source);
    const emit = copy.emit;
    emit({ type: 'image', source: sourceText, status: 'started' });
    logger.info({ image: sourceText }, 'clone started');
    let result: CloneResult;
    const scope = { signal: copy.signal, budget: new ImageBudget(this.#options.limits) };
    try {
      if (isBackupImage(source, backup)) {
        result = await this.#alreadyBackup(source, scope);
      } else if (this.#options.sourceAllowed?.(source.registry) === false) {
        result = {
          source: sourceText,
          status: 'failed',
          error: `${source.registry} is not an allowed source registry (SOURCE_REGISTRIES)`,
          ms: 0,
        };
      } else {
        result = await this.#backUp(source, emit, scope, credentials);
      }
    } catch (error) {
      // A copy ended on purpose says why, whatever request it was in when it ended.
      const aborted: unknown = copy.signal.aborted ? copy.signal.reason : undefined;
      const cause = aborted instanceof CopyAbortedError ? aborted : error;
      const reason = cause instanceof SourceError ? cause.reason : undefined;
      result = { source: sourceText, status: 'failed', error: describeError(cause), ...(reason && { reason }), ms: 0 };
      const detail = errorDetail(cause);
      if (detail !== undefined) logger.warn({ image: sourceText, error: result.error, detail }, 'registry unreachable');
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
  async #alreadyBackup(source: ImageReference, scope: CopyScope): Promise<CloneResult> {
    const repository = this.#options.repository(source, 'pull', scope);
    const digest = source.digest ?? (await repository.resolve(source.tag!)).digest;
    return {
      source: formatReference(source),
      target: `${repositoryName(source)}${source.tag ? `:${source.tag}` : ''}@${digest}`,
      digest,
      status: 'exists',
      ms: 0,
    };
  }

  async #backUp(
    source: ImageReference,
    emit: EmitEvent,
    scope: CopyScope,
    credentials: RegistryCredentials | undefined,
  ): Promise<CloneResult> {
    const sourceText = formatReference(source);
    const targetRef = backupReference(source, this.#options.backup);
    const from = this.#options.repository(source, 'pull', scope, credentials);
    const to = this.#options.repository(targetRef, 'push', scope);
    const tag = targetRef.tag!;

    // The tag is pushed last, after the referrers: a tag on the digest means the copy is complete,
    // so an interrupted copy is finished by the next request. Asked while the source's digest is.
    const tagged = to.tagDigest(tag);
    tagged.catch(() => {}); // awaited below, unless resolving the source fails first

    let digest = source.digest;
    let sourceManifest: FetchedManifest | undefined; // when the registry named no digest and a GET told
    if (digest === undefined) {
      const resolved = await asSource(from.resolve(source.tag!));
      digest = resolved.digest;
      sourceManifest = resolved.manifest;
    }
    const targetText = `${repositoryName(targetRef)}:${tag}@${digest}`;
    if ((await tagged) === digest) {
      return { source: sourceText, target: targetText, digest, status: 'exists', bytes: 0, ms: 0 };
    }
    // What refers to the image (in the source) and what the backup holds, asked side by side.
    const [referrers, start] = await allSettled([
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
    const [root, exists] = await allSettled([known ?? asSource(source.getManifest(digest)), created ? false : target.exists()]);
    return { root, held: false, empty: !exists, created };
  }
}

/** A failure of the source itself, which the workload's owner can act on (see FAILURE_REASONS). */
class SourceError extends PermanentError {
  readonly reason: string;

  constructor(reason: string, cause: Error) {
    super(cause.message);
    this.name = 'SourceError';
    this.reason = reason;
  }
}

/** The source's answer about the image itself: gone (404), or refused (401, 403). */
async function asSource<T>(step: Promise<T>): Promise<T> {
  try {
    return await step;
  } catch (error) {
    if (error instanceof NotFoundError) throw new SourceError(FAILURE_REASONS.sourceNotFound, error);
    if (error instanceof RegistryError && (error.status === 401 || error.status === 403)) {
      throw new SourceError(FAILURE_REASONS.sourceUnauthorized, error);
    }
    throw error;
  }
}

/** Tells credentials apart without holding them: a digest of the pair. */
function credentialsKey(credentials: RegistryCredentials): string {
  return createHash('sha256').update(`${credentials.username}\0${credentials.password}`).digest('base64url');
}

/**
 * One copy and whoever waits for it: their progress listeners, and the signals of the ones that
 * may stop waiting. The copy is aborted at its deadline, or once every waiter has gone.
 */
class InFlightCopy {
  readonly #result: Promise<CloneResult>;
  #settle!: (result: CloneResult) => void;
  readonly #control = new AbortController();
  readonly #listeners = new Set<EmitEvent>();
  readonly #deadline: ReturnType<typeof setTimeout>;
  #waiters = 0;
  readonly #source: string;

  constructor(source: string, deadlineMs: number) {
    this.#source = source;
    this.#result = new Promise((resolve) => (this.#settle = resolve));
    this.#deadline = setTimeout(
      () =>
        this.#control.abort(
          new CopyAbortedError(`the copy took longer than ${Math.round(deadlineMs / 1000)} s (IMAGE_DEADLINE_SECONDS)`),
        ),
      deadlineMs,
    );
    (this.#deadline as { unref?: () => void }).unref?.();
  }

  /** Runs the copy (which never throws: a failure is a result); resolves when it has ended. */
  async run(copy: () => Promise<CloneResult>): Promise<void> {
    try {
      this.#settle(await copy());
    } catch (error) {
      // copy() reports failures as results; this only keeps a bug from leaving waiters hanging.
      this.#settle({ source: this.#source, status: 'failed', error: describeError(error), ms: 0 });
    } finally {
      clearTimeout(this.#deadline);
    }
  }

  get signal(): AbortSignal {
    return this.#control.signal;
  }

  readonly emit: EmitEvent = (event) => this.#listeners.forEach((listener) => listener(event));

  /** The result, or undefined when `signal` ended the wait first. */
  async wait(emit: EmitEvent | undefined, signal: AbortSignal | undefined): Promise<CloneResult | undefined> {
    this.#waiters++;
    if (emit) this.#listeners.add(emit);
    if (signal === undefined) return this.#result;
    let leave!: () => void;
    const gone = new Promise<undefined>((resolve) => {
      leave = () => {
        if (emit) this.#listeners.delete(emit);
        if (--this.#waiters === 0) this.#control.abort(new CopyAbortedError('cancelled: nobody waits for this copy any more'));
        resolve(undefined);
      };
      if (signal.aborted) leave();
      else signal.addEventListener('abort', leave, { once: true });
    });
    try {
      return await Promise.race([this.#result, gone]);
    } finally {
      signal.removeEventListener('abort', leave);
    }
  }
}
