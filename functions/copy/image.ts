// Copies one image, digest-exact: every platform of an index, attestation manifests, the blobs of
// each, children before parents, then the signatures and attestations that refer to it. Skipped in
// one HEAD when the backup already holds the digest.

import { backupReference, isBackupImage, type BackupLocation } from '../naming.ts';
import { formatReference, parseReference, repositoryName, type ImageReference } from '../reference.ts';
import { pullScope, pushScope, type HttpResponse } from '../registry/auth.ts';
import { discard, type RegistryClient } from '../registry/client.ts';
import { classifyError, describeError, PermanentError, RegistryError } from '../registry/errors.ts';
import { withRetries, type RetryPolicy } from '../registry/retry.ts';
import { blobUnits, slotUnits, SMALL_BLOB_BYTES, type BlobCopier, type BlobOutcome, type Repository } from './blob.ts';
import { digestOf } from './digest.ts';
import { mapLimit, Semaphore } from './limit.ts';
import { MANIFEST_ACCEPT, MANIFEST_SIZE_LIMIT, parseManifest, type Descriptor } from './manifest.ts';
import { noReferrers, ReferrerCopier } from './referrers.ts';

export type CloneStatus = 'copied' | 'exists' | 'failed';

export interface CloneResult {
  readonly source: string;
  readonly target?: string;
  readonly digest?: string;
  readonly status: CloneStatus;
  readonly bytes?: number;
  readonly ms: number;
  readonly error?: string;
}

export type CloneEvent =
  | { readonly type: 'image'; readonly source: string; readonly status: 'started' }
  | { readonly type: 'blob'; readonly source: string; readonly digest: string; readonly done: number; readonly total: number }
  | { readonly type: 'result'; readonly result: CloneResult };

export type EmitEvent = (event: CloneEvent) => void;

/** The subset of pino's logger the engine uses, so workerd can pass something lighter. */
export interface Logger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

export interface ImageCopierOptions {
  readonly client: RegistryClient;
  readonly blobs: BlobCopier;
  readonly backup: BackupLocation;
  readonly logger: Logger;
  /** Blobs of one manifest copied at once (the process-wide bound is in the BlobCopier). */
  readonly blobConcurrency: number;
  /** Small blobs (see SMALL_BLOB_BYTES) that share one of those slots. */
  readonly smallBlobsPerSlot: number;
  readonly retryPolicy: RetryPolicy;
  /**
   * Runs before anything is pushed to a backup repository (ECR creates it); true when it has just
   * created the repository, which is then known to be empty.
   */
  readonly prepareTarget?: (repository: string) => Promise<boolean | void>;
  readonly now?: () => number;
}

export interface FetchedManifest {
  readonly bytes: Uint8Array;
  readonly digest: string;
  readonly mediaType: string;
}

/** A copy into a repository that did not exist when it began. */
interface FreshRepository {
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

/** Progress events are sent every this many bytes of a blob (and at its end). */
const PROGRESS_STEP = 1024 * 1024;

export class ImageCopier {
  readonly #options: ImageCopierOptions;
  readonly #now: () => number;
  readonly #referrers: ReferrerCopier;
  /** Copies in flight, by source and target: concurrent requests for one image share one copy. */
  readonly #inFlight = new Map<string, { promise: Promise<CloneResult>; listeners: Set<EmitEvent> }>();

  constructor(options: ImageCopierOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#referrers = new ReferrerCopier(this);
  }

  get client(): RegistryClient {
    return this.#options.client;
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
    const progress = { bytes: 0 };
    let result: CloneResult;
    try {
      if (isBackupImage(source, backup)) {
        const digest = source.digest ?? (await this.resolveDigest(source, source.tag!)).digest;
        result = {
          source: sourceText,
          target: `${repositoryName(source)}${source.tag ? `:${source.tag}` : ''}@${digest}`,
          digest,
          status: 'exists',
          ms: 0,
        };
      } else {
        result = await this.#backUp(source, emit, progress);
      }
    } catch (error) {
      result = { source: sourceText, status: 'failed', error: describeError(error), ms: 0 };
    }
    result = { ...result, ms: this.#now() - started };
    if (result.status === 'failed') {
      logger.warn({ image: sourceText, error: result.error, ms: result.ms }, 'clone failed');
    } else {
      logger.info(
        {
          image: sourceText,
          target: result.target,
          digest: result.digest,
          status: result.status,
          bytes: result.bytes,
          ms: result.ms,
        },
        'clone finished',
      );
    }
    emit({ type: 'result', result });
    return result;
  }

  async #backUp(source: ImageReference, emit: EmitEvent, progress: { bytes: number }): Promise<CloneResult> {
    const { backup } = this.#options;
    const sourceText = formatReference(source);
    const targetRef = backupReference(source, backup);
    const target: Repository = { registry: targetRef.registry, repository: targetRef.repository };
    const tag = targetRef.tag!;

    // The tag is pushed last, after the referrers: a tag on the digest means the copy is complete,
    // so an interrupted copy is finished by the next request. Asked while the source's digest is.
    const tagged = this.tagDigest(target, tag);
    tagged.catch(() => {}); // awaited below, unless resolving the source fails first

    // Resolve the digest with a HEAD where possible: it does not count as a pull on Docker Hub.
    let digest = source.digest;
    let sourceManifest: FetchedManifest | undefined; // when the registry named no digest and a GET told
    if (digest === undefined) {
      const resolved = await this.resolveDigest(source, source.tag!);
      digest = resolved.digest;
      sourceManifest = resolved.manifest;
    }
    const targetText = `${repositoryName(target)}:${tag}@${digest}`;
    if ((await tagged) === digest) {
      return { source: sourceText, target: targetText, digest, status: 'exists', bytes: 0, ms: 0 };
    }
    // What refers to the image (in the source) and what the backup holds, asked side by side.
    const [referrers, start] = await Promise.all([
      this.#referrers.find(source, digest),
      this.#startingPoint(source, target, digest, sourceManifest),
    ]);
    // With nothing to copy between the image and its tag, the image is pushed once, by tag.
    const pushAs = noReferrers(referrers) ? tag : digest;
    if (!start.held) {
      const fresh = start.empty ? { uploads: new Map<string, Promise<BlobOutcome>>(), certainlyEmpty: start.created } : undefined;
      await this.copyTree(source, target, start.root, pushAs, sourceText, emit, progress, fresh);
    }
    await this.#referrers.copy(referrers, source, target, sourceText, emit, progress);
    if (start.held || pushAs !== tag) await this.pushManifest(target, tag, start.root);
    return {
      source: sourceText,
      target: targetText,
      digest,
      status: start.held ? 'exists' : 'copied',
      bytes: progress.bytes,
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
  ): Promise<{ root: FetchedManifest; held: boolean; empty: boolean; created: boolean }> {
    const created = (await this.#options.prepareTarget?.(target.repository)) === true;
    if (!created && (await this.hasManifest(target, digest))) {
      return { root: await this.fetchManifest(target, digest), held: true, empty: false, created };
    }
    const [root, exists] = await Promise.all([
      known ?? this.fetchManifest(source, digest),
      created ? false : this.repositoryExists(target),
    ]);
    return { root, held: false, empty: !exists, created };
  }

  /**
   * Copies a manifest and everything under it, then pushes it under `reference` (a tag or its
   * digest). A child the backup already holds is skipped whole. With `fresh` (the target
   * repository did not exist when the copy began) manifests and small blobs are not asked about
   * first: registries link blobs and manifests per repository, so none can be there unless a copy
   * put it there, and a blob shared by several manifests of the image is uploaded once.
   */
  async copyTree(
    source: Repository,
    target: Repository,
    manifest: FetchedManifest,
    reference: string,
    sourceText: string,
    emit: EmitEvent,
    progress: { bytes: number },
    fresh?: FreshRepository,
  ): Promise<HttpResponse> {
    const parsed = parseManifest(manifest.bytes, manifest.mediaType);
    await mapLimit(parsed.manifests, 2, async (child: Descriptor) => {
      if (fresh === undefined && (await this.hasManifest(target, child.digest))) return;
      const fetched = await this.fetchManifest(source, child.digest);
      await this.copyTree(source, target, fetched, child.digest, sourceText, emit, progress, fresh);
    });
    const { blobConcurrency, smallBlobsPerSlot } = this.#options;
    const slots = new Semaphore(slotUnits(blobConcurrency, smallBlobsPerSlot));
    const copyBlob = async (blob: Descriptor) => {
      const underway = fresh?.uploads.get(blob.digest);
      if (underway !== undefined) {
        await underway; // another manifest of this image uploads it: wait, count it once
        return;
      }
      let reported = 0;
      const onBytes = (done: number) => {
        if (done - reported >= PROGRESS_STEP || done === blob.size) {
          reported = done;
          emit({ type: 'blob', source: sourceText, digest: blob.digest, done, total: blob.size });
        }
      };
      const absent = fresh !== undefined && (fresh.certainlyEmpty || blob.size < SMALL_BLOB_BYTES);
      const copying = this.#options.blobs.copy(source, target, blob, onBytes, { absent });
      fresh?.uploads.set(blob.digest, copying);
      if ((await copying) === 'uploaded') progress.bytes += blob.size;
    };
    let failed = false;
    await Promise.all(
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
    return this.pushManifest(target, reference, manifest);
  }

  /**
   * False only when the registry says the repository does not exist (404 NAME_UNKNOWN on its tag
   * list); anything else, a refusal or an error included, counts as "may exist", so the copy asks
   * about each blob as usual. A registry may still say so after an interrupted copy left blobs
   * but no tag (distribution does): see FreshRepository for what the copy still asks then.
   */
  async repositoryExists(repository: Repository): Promise<boolean> {
    try {
      const response = await this.#options.client.send({
        registry: repository.registry,
        method: 'GET',
        path: `/v2/${repository.repository}/tags/list?n=1`,
        scopes: [pullScope(repository.repository)],
        what: `list tags of ${repositoryName(repository)}`,
        expect: [200, 404],
      });
      if (response.status === 200) {
        await discard(response);
        return true;
      }
      const body = (await response.json().catch(() => undefined)) as { errors?: { code?: string }[] } | undefined;
      return body?.errors?.[0]?.code !== 'NAME_UNKNOWN';
    } catch {
      return true;
    }
  }

  /** HEAD by tag for the digest; a GET when the registry does not say (and then the bytes are kept). */
  async resolveDigest(repository: Repository, tag: string): Promise<{ digest: string; manifest?: FetchedManifest }> {
    const head = await this.#options.client.send({
      registry: repository.registry,
      method: 'HEAD',
      path: `/v2/${repository.repository}/manifests/${tag}`,
      scopes: [pullScope(repository.repository)],
      what: `resolve ${repositoryName(repository)}:${tag}`,
      expect: [200, 404],
      headers: { accept: MANIFEST_ACCEPT },
    });
    await discard(head);
    if (head.status === 404) {
      throw new PermanentError(`${repositoryName(repository)}:${tag} not found (no such tag or repository)`);
    }
    const digest = head.headers.get('docker-content-digest');
    if (digest && /^sha256:[a-f0-9]{64}$|^sha512:[a-f0-9]{128}$/.test(digest)) return { digest };
    const manifest = await this.fetchManifest(repository, tag);
    return { digest: manifest.digest, manifest };
  }

  async hasManifest(repository: Repository, digest: string): Promise<boolean> {
    const head = await this.#options.client.send({
      registry: repository.registry,
      method: 'HEAD',
      path: `/v2/${repository.repository}/manifests/${digest}`,
      scopes: [pullScope(repository.repository)],
      what: `check manifest ${digest} in ${repositoryName(repository)}`,
      expect: [200, 404],
      headers: { accept: MANIFEST_ACCEPT },
    });
    await discard(head);
    return head.status === 200;
  }

  /** The digest a tag points at, or undefined when the tag does not exist. */
  async tagDigest(repository: Repository, tag: string): Promise<string | undefined> {
    const head = await this.#options.client.send({
      registry: repository.registry,
      method: 'HEAD',
      path: `/v2/${repository.repository}/manifests/${tag}`,
      scopes: [pullScope(repository.repository)],
      what: `check tag ${repositoryName(repository)}:${tag}`,
      expect: [200, 404],
      headers: { accept: MANIFEST_ACCEPT },
    });
    await discard(head);
    if (head.status === 404) return undefined;
    return head.headers.get('docker-content-digest') ?? (await this.fetchManifest(repository, tag)).digest;
  }

  /** GETs a manifest (at most 4 MiB); by digest, its bytes must hash to that digest. */
  async fetchManifest(repository: Repository, reference: string): Promise<FetchedManifest> {
    const name = `${repositoryName(repository)}${reference.includes(':') ? '@' : ':'}${reference}`;
    // The body is read inside the retry: a connection dropped mid-manifest is retried too.
    const { bytes, contentType } = await withRetries(
      async () => {
        const response = await this.#options.client.send({
          registry: repository.registry,
          method: 'GET',
          path: `/v2/${repository.repository}/manifests/${reference}`,
          scopes: [pullScope(repository.repository)],
          what: `get manifest ${name}`,
          expect: [200, 404],
          headers: { accept: MANIFEST_ACCEPT },
        });
        if (response.status === 404) {
          await discard(response);
          throw new PermanentError(`${name} not found`);
        }
        return { bytes: await readManifestBytes(response, name), contentType: response.headers.get('content-type') };
      },
      { policy: this.#options.retryPolicy, classify: classifyError },
    );
    const expected = reference.includes(':') ? reference : undefined;
    const digest = digestOf(bytes, expected ?? 'sha256:');
    if (expected !== undefined && digest !== expected) {
      throw new PermanentError(`manifest ${name} does not match its digest (got ${digest})`);
    }
    return { bytes, digest, mediaType: parseManifest(bytes, contentType).mediaType };
  }

  /** PUTs the exact bytes with Content-Type = their media type. */
  async pushManifest(repository: Repository, reference: string, manifest: FetchedManifest): Promise<HttpResponse> {
    const name = `${repositoryName(repository)}${reference.includes(':') ? '@' : ':'}${reference}`;
    try {
      const response = await this.#options.client.send({
        registry: repository.registry,
        method: 'PUT',
        path: `/v2/${repository.repository}/manifests/${reference}`,
        scopes: [pushScope(repository.repository)],
        what: `push manifest ${name}`,
        expect: [201, 200, 204],
        headers: { 'content-type': manifest.mediaType },
        body: manifest.bytes,
      });
      await discard(response);
      const stored = response.headers.get('docker-content-digest');
      if (stored && stored !== manifest.digest) {
        throw new PermanentError(`push manifest ${name}: the registry stored ${stored}, not ${manifest.digest}`);
      }
      return response;
    } catch (error) {
      // An immutable tag (ECR) that already points at this digest is what we wanted.
      if (error instanceof RegistryError && error.status >= 400 && error.status < 500 && !reference.includes(':')) {
        if ((await this.tagDigest(repository, reference)) === manifest.digest) return new Response(null, { status: 200 });
      }
      throw error;
    }
  }
}

async function readManifestBytes(response: HttpResponse, name: string): Promise<Uint8Array> {
  const declared = Number(response.headers.get('content-length') ?? NaN);
  if (declared > MANIFEST_SIZE_LIMIT) {
    await discard(response);
    throw new PermanentError(`manifest ${name} is larger than 4 MiB`);
  }
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (!response.body) return new Uint8Array(0);
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MANIFEST_SIZE_LIMIT) {
      await reader.cancel();
      throw new PermanentError(`manifest ${name} is larger than 4 MiB`);
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}
