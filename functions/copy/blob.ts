// Copies one blob registry-to-registry: check existing → mount → upload, streaming the source body
// into a monolithic PUT with Content-Length while its digest is verified. Holds no blob over 64 KiB whole.

import { FairSemaphore } from '../../lib/fair-semaphore.ts';
import { StallWatch } from '../../lib/stall.ts';
import { DigestVerifier, digestOf } from '../registry/digest.ts';
import { classifyError, DigestMismatchError, RegistryError, StallError } from '../registry/errors.ts';
import { discard, type HttpResponse } from '../registry/http.ts';
import type { Descriptor } from '../registry/manifest.ts';
import type { Repository } from '../registry/repository.ts';
import { withRetries, type RetryPolicy } from '../registry/retry.ts';
import type { CopyContext } from './context.ts';

/** Runtime hooks: how a streamed body keeps its length (workerd needs FixedLengthStream). */
export interface Runtime {
  sizedBody(stream: ReadableStream<Uint8Array>, size: number): ReadableStream<Uint8Array>;
}

export type BlobOutcome = 'present' | 'mounted' | 'uploaded';

/**
 * Below this size a blob's copy costs round trips (a GET, a POST, a PUT) far more than bytes, so
 * `smallPerSlot` of them share one slot of BLOB_CONCURRENCY and TRANSFER_CONCURRENCY.
 */
export const SMALL_BLOB_BYTES = 1024 * 1024;

/** Units of a slot a blob takes, where one slot is `smallPerSlot` units. */
export function blobUnits(size: number, smallPerSlot: number): number {
  return size < SMALL_BLOB_BYTES ? 1 : smallPerSlot;
}

/** Units in `slots` slots: also the most blobs (all of them small) under way in them at once. */
export function slotUnits(slots: number, smallPerSlot: number): number {
  return slots * smallPerSlot;
}

/**
 * Where blobs were last seen in the backup registry, so a blob already held by one backup repository
 * is mounted into another instead of uploaded again. Bounded; forgets the oldest first.
 */
export class KnownBlobs {
  readonly #limit: number;
  readonly #repositoryByBlob = new Map<string, string>();

  constructor(limit = 50_000) {
    this.#limit = limit;
  }

  remember(registry: string, repository: string, digest: string): void {
    const key = `${registry}@${digest}`;
    this.#repositoryByBlob.delete(key);
    this.#repositoryByBlob.set(key, repository);
    if (this.#repositoryByBlob.size > this.#limit) {
      this.#repositoryByBlob.delete(this.#repositoryByBlob.keys().next().value!);
    }
  }

  /** A repository of `registry` known to hold the blob, other than `except`. */
  holder(registry: string, digest: string, except: string): string | undefined {
    const repository = this.#repositoryByBlob.get(`${registry}@${digest}`);
    return repository !== except ? repository : undefined;
  }
}

export interface BlobCopierOptions {
  readonly runtime: Runtime;
  readonly known: KnownBlobs;
  /** Blob transfers at once across every copy in this process (TRANSFER_CONCURRENCY). */
  readonly transferConcurrency: number;
  /** Small blobs (see SMALL_BLOB_BYTES) that count as one transfer. */
  readonly smallBlobsPerSlot: number;
  readonly retryPolicy: RetryPolicy;
  readonly onRetry?: (info: { what: string; attempt: number; delayMs: number; error: unknown }) => void;
  /** Bytes per PATCH for registries that need chunked uploads (default 16 MiB). */
  readonly chunkSize?: number;
  /** A transfer whose bytes stop flowing for this long is given up (and retried). */
  readonly stallMs: number;
}

export class BlobCopier {
  readonly #options: BlobCopierOptions;
  /** Shared by the source registries in turn, none holding all of it (see FairSemaphore). */
  readonly #transfers: FairSemaphore;
  /** Registries that refused a monolithic upload: they get chunked uploads. */
  readonly #chunked = new Set<string>();

  constructor(options: BlobCopierOptions) {
    this.#options = options;
    // A quarter of the slots (rounded down) is kept for other registries than the busiest one.
    const reserve = slotUnits(Math.floor(options.transferConcurrency / 4), options.smallBlobsPerSlot);
    this.#transfers = new FairSemaphore(slotUnits(options.transferConcurrency, options.smallBlobsPerSlot), reserve);
  }

  /**
   * Makes the context's target hold the blob. Retries the whole transfer (a stream cannot be
   * resent). `absent`: the caller knows the target repository cannot hold it yet, so no HEAD asks.
   */
  async copy(context: CopyContext, blob: Descriptor, options: { readonly absent?: boolean } = {}): Promise<BlobOutcome> {
    const what = `blob ${blob.digest} of ${context.source}`;
    const onBytes = context.blobProgress(blob);
    return this.#transfers.run(
      context.source.registry,
      () =>
        withRetries(() => this.#copyOnce(context.source, context.target, blob, what, onBytes, options.absent === true), {
          policy: this.#options.retryPolicy,
          classify: classifyError,
          onRetry: (info) => this.#options.onRetry?.({ what, ...info }),
        }),
      blobUnits(blob.size, this.#options.smallBlobsPerSlot),
      // A copy aborted (its deadline, nobody waiting) gives its slot back at once.
      context.source.signal,
    );
  }

  async #copyOnce(
    source: Repository,
    target: Repository,
    blob: Descriptor,
    what: string,
    onBytes: (done: number) => void,
    absent: boolean,
  ): Promise<BlobOutcome> {
    const { known } = this.#options;
    if (!absent && (await target.hasBlob(blob.digest, what))) {
      known.remember(target.registry, target.repository, blob.digest);
      return 'present';
    }

    // Mount from a repository of the same registry that holds the blob: the source itself when the
    // backup lives in the source registry, else another backup repository we pushed it to.
    const mountFrom =
      source.registry === target.registry && source.repository !== target.repository
        ? source.repository
        : known.holder(target.registry, blob.digest, target.repository);
    const download = new Download(source, blob, what, this.#options.stallMs);
    try {
      // Without a mount to try, the upload will need the source's bytes: ask for them while the
      // upload session starts, one round trip less per blob.
      if (!mountFrom) download.start();
      const start = await target.startUpload(what, mountFrom ? { digest: blob.digest, from: mountFrom } : undefined);
      if (start.mounted) {
        known.remember(target.registry, target.repository, blob.digest);
        return 'mounted';
      }
      await this.#upload(target, start.location, blob, download, onBytes);
      known.remember(target.registry, target.repository, blob.digest);
      return 'uploaded';
    } catch (error) {
      throw download.stalled ?? error;
    } finally {
      await download.end();
    }
  }

  /** Sends the download's bytes to the upload location, checked against the blob's digest. */
  async #upload(
    target: Repository,
    location: string,
    blob: Descriptor,
    download: Download,
    onBytes: (done: number) => void,
  ): Promise<void> {
    const { what } = download;
    const response = await download.start();
    const progress = (done: number) => {
      download.progress();
      onBytes(done);
    };
    const inChunks = this.#chunked.has(target.registry);
    if (!inChunks && arrivesInOneRead(response, blob)) {
      // At most 64 KiB: read whole (one socket read holds it anyway), checked, sent as bytes. No
      // stream pipeline per blob, which for such blobs costs more CPU than the bytes themselves.
      const bytes = await verifiedBytes(response, blob, what);
      download.finished();
      progress(blob.size);
      return this.#uploadWhole(target, location, blob, bytes, what);
    }
    if (!response.body) throw new RegistryError(`download ${what}: empty response`, 502);
    const verifier = new DigestVerifier(blob.digest, blob.size, what, progress);
    const verified = response.body.pipeThrough(verifier.stream);
    try {
      await (inChunks
        ? this.#uploadInChunks(target, location, blob, verified, what)
        : this.#uploadWhole(target, location, blob, this.#options.runtime.sizedBody(verified, blob.size), what));
    } catch (error) {
      throw verifier.failure ?? error;
    }
    if (verifier.verified) download.finished();
  }

  /**
   * One PUT with the whole body and its Content-Length: the way every registry takes. A registry
   * that refuses it (413: a body limit in front of it) gets chunks from then on, and this blob is
   * tried again at once.
   */
  async #uploadWhole(
    target: Repository,
    location: string,
    blob: Descriptor,
    body: ReadableStream<Uint8Array> | Uint8Array,
    what: string,
  ): Promise<void> {
    try {
      await target.finishUpload(location, blob.digest, blob.size, body, what);
    } catch (error) {
      if (!(error instanceof RegistryError && error.status === 413)) throw error;
      this.#chunked.add(target.registry);
      throw new RegistryError(`${error.message}; switching to chunked uploads`, 503, 'CHUNKED', 0);
    }
  }

  /**
   * PATCHes of at most `chunkSize` bytes, each a slice of the one stream (nothing is buffered),
   * each to the location the previous answer gave, then an empty PUT with the digest.
   */
  async #uploadInChunks(target: Repository, location: string, blob: Descriptor, body: ReadableStream<Uint8Array>, what: string) {
    const chunkSize = this.#options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    const slices = new StreamSlicer(body);
    let next = location;
    for (let offset = 0; offset < blob.size; offset += chunkSize) {
      const length = Math.min(chunkSize, blob.size - offset);
      next = await target.uploadChunk(next, offset, length, this.#options.runtime.sizedBody(slices.next(length), length), what);
    }
    // The verifier holds the last bytes back until the digest is checked: drain to its end.
    await slices.finish();
    await target.commitChunkedUpload(next, blob.digest, what);
  }
}

/**
 * One blob's download: started at most once, early or when the upload needs it; aborted when its
 * bytes stop flowing for the stall time (a source that trickles, a backup that stops reading), and
 * when the transfer ends without having read it to its end (aborting a finished one only builds an
 * error), so that no download lingers.
 */
class Download {
  readonly what: string;
  readonly #source: Repository;
  readonly #blob: Descriptor;
  readonly #stallMs: number;
  readonly #control = new AbortController();
  #response: Promise<HttpResponse> | undefined;
  #watch: StallWatch | undefined;
  #finished = false;

  constructor(source: Repository, blob: Descriptor, what: string, stallMs: number) {
    this.#source = source;
    this.#blob = blob;
    this.what = what;
    this.#stallMs = stallMs;
  }

  start(): Promise<HttpResponse> {
    if (this.#response === undefined) {
      const seconds = Math.round(this.#stallMs / 1000);
      this.#watch = new StallWatch(this.#stallMs, () =>
        this.#control.abort(new StallError(`download ${this.what}: no progress for ${seconds} s (STALL_SECONDS)`)),
      );
      this.#response = this.#source.getBlob(this.#blob.digest, this.what, this.#control.signal);
      this.#response.catch(() => {}); // awaited by the upload, unless starting it fails first
    }
    return this.#response;
  }

  progress(): void {
    this.#watch?.touch();
  }

  /** Read to its end: nothing left to abort. */
  finished(): void {
    this.#finished = true;
  }

  /** The reason, when the download was given up for making no progress. */
  get stalled(): StallError | undefined {
    const reason: unknown = this.#control.signal.reason;
    return reason instanceof StallError ? reason : undefined;
  }

  async end(): Promise<void> {
    this.#watch?.stop();
    if (this.#finished || this.#response === undefined) return;
    this.#control.abort();
    await this.#response.then(discard, () => {});
  }
}

/**
 * Blobs up to this size are read whole before their upload: a socket read brings up to 64 KiB at
 * once, so streaming them would hold the same bytes, through more machinery.
 */
const ONE_READ_BYTES = 64 * 1024;

/** Whether the download is a small blob whose length the registry states as expected. */
function arrivesInOneRead(download: HttpResponse, blob: Descriptor): boolean {
  return blob.size <= ONE_READ_BYTES && download.headers.get('content-length') === String(blob.size);
}

/** The download's bytes, once their length and digest are checked. */
async function verifiedBytes(download: HttpResponse, blob: Descriptor, what: string): Promise<Uint8Array> {
  const bytes = new Uint8Array(await download.arrayBuffer());
  if (bytes.byteLength !== blob.size) throw new DigestMismatchError(what, `${blob.size} bytes`, `${bytes.byteLength} bytes`);
  const actual = digestOf(bytes, blob.digest);
  if (actual !== blob.digest) throw new DigestMismatchError(what, blob.digest, actual);
  return bytes;
}

/** Chunks used once a registry refuses a whole blob in one request (413). */
const DEFAULT_CHUNK_SIZE = 16 * 1024 * 1024;

/** Cuts one stream into consecutive streams of given lengths, passing bytes through as they come. */
class StreamSlicer {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #leftover: Uint8Array | undefined;

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.getReader();
  }

  next(length: number): ReadableStream<Uint8Array> {
    let remaining = length;
    return new ReadableStream<Uint8Array>({
      pull: async (controller) => {
        if (remaining === 0) return controller.close();
        let chunk = this.#leftover;
        this.#leftover = undefined;
        if (!chunk) {
          const { done, value } = await this.#reader.read();
          if (done) return controller.error(new Error(`the blob ended ${remaining} bytes early`));
          chunk = value;
        }
        if (chunk.byteLength > remaining) {
          this.#leftover = chunk.subarray(remaining);
          chunk = chunk.subarray(0, remaining);
        }
        remaining -= chunk.byteLength;
        controller.enqueue(chunk);
        if (remaining === 0) controller.close();
      },
    });
  }

  /** Reads to the end, so a failed digest check surfaces here. */
  async finish(): Promise<void> {
    for (;;) {
      const { done, value } = await this.#reader.read();
      if (done) return;
      if (value.byteLength > 0) throw new Error('the blob is longer than its size');
    }
  }
}
