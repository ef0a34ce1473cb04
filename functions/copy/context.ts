// One image's copy as every step of it sees it: where from, where to, what to tell the caller,
// and how many bytes it has uploaded so far.

import type { CloneEvent } from '../contract/index.ts';
import type { Descriptor } from '../registry/manifest.ts';
import type { Repository } from '../registry/repository.ts';

export type EmitEvent = (event: CloneEvent) => void;

/** Progress events are sent every this many bytes of a blob (and at its end). */
const PROGRESS_STEP = 1024 * 1024;

export class CopyContext {
  readonly source: Repository;
  readonly target: Repository;
  /** The normalised source reference, as results and events name the image. */
  readonly image: string;
  readonly #emit: EmitEvent;
  #bytesUploaded = 0;
  /** Manifests of this image copied or being copied, by digest: each is copied once. */
  readonly #manifests = new Map<string, Promise<void>>();

  constructor(options: { source: Repository; target: Repository; image: string; emit: EmitEvent }) {
    this.source = options.source;
    this.target = options.target;
    this.image = options.image;
    this.#emit = options.emit;
  }

  /**
   * Runs `copy` for a manifest digest once per image: an index may list a child many times, and
   * several indexes the same child; later askers wait for the first copy.
   */
  once(digest: string, copy: () => Promise<void>): Promise<void> {
    let copying = this.#manifests.get(digest);
    if (copying === undefined) {
      copying = copy();
      this.#manifests.set(digest, copying);
    }
    return copying;
  }

  /** Blob bytes this copy has uploaded (blobs found or mounted in the backup do not count). */
  get bytesUploaded(): number {
    return this.#bytesUploaded;
  }

  uploaded(bytes: number): void {
    this.#bytesUploaded += bytes;
  }

  /** The callback a blob transfer reports its bytes to: an event every MiB and at its end. */
  blobProgress(blob: Descriptor): (done: number) => void {
    let reported = 0;
    return (done) => {
      if (done - reported >= PROGRESS_STEP || done === blob.size) {
        reported = done;
        this.#emit({ type: 'blob', source: this.image, digest: blob.digest, done, total: blob.size });
      }
    };
  }
}
