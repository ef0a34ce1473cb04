// What one image's copy may cost, whatever its registry serves: a reference is chosen by whoever
// may create a workload, and an index can list a child thousands of times, nest indexes or run to
// megabytes. Each bound fails the image with a message naming the setting that bounds it.

import { PermanentError } from '../registry/errors.ts';
import type { ManifestBudget } from '../registry/repository.ts';

/** What one image may cost at most, whatever its registry serves. */
export interface CopyLimits {
  /** Levels of indexes above a manifest (an index of images is 1). */
  readonly indexDepth: number;
  /** Manifests read for one image: its own, its platforms', what refers to it. */
  readonly manifestsPerImage: number;
  /** Bytes of all those manifests together. */
  readonly manifestBytesPerImage: number;
  /** One image's copy ends (failed) after this long. */
  readonly imageDeadlineMs: number;
  /** A request or transfer without a byte of progress for this long is given up (and retried). */
  readonly stallMs: number;
}

export const DEFAULT_LIMITS: CopyLimits = {
  indexDepth: 4,
  manifestsPerImage: 256,
  manifestBytesPerImage: 16 * 1024 * 1024,
  imageDeadlineMs: 30 * 60_000,
  stallMs: 60_000,
};

/** A copy that ends early, on purpose: never retried. */
export class CopyAbortedError extends PermanentError {
  constructor(message: string) {
    super(message);
    this.name = 'CopyAbortedError';
  }
}

/** Counts the manifests one copy reads (and their bytes) against the image's limits. */
export class ImageBudget implements ManifestBudget {
  readonly #limits: CopyLimits;
  #manifests = 0;
  #bytes = 0;

  constructor(limits: CopyLimits) {
    this.#limits = limits;
  }

  charge(bytes: number, name: string): void {
    this.#manifests += 1;
    this.#bytes += bytes;
    if (this.#manifests > this.#limits.manifestsPerImage) {
      throw new PermanentError(
        `${name}: the image has more than ${this.#limits.manifestsPerImage} manifests (MAX_MANIFESTS_PER_IMAGE)`,
      );
    }
    if (this.#bytes > this.#limits.manifestBytesPerImage) {
      throw new PermanentError(
        `${name}: the image's manifests exceed ${this.#limits.manifestBytesPerImage} bytes in all (MAX_MANIFEST_BYTES_PER_IMAGE)`,
      );
    }
  }
}

/** Throws when an index at `depth` (the image's own manifest is 0) would nest too deep. */
export function checkIndexDepth(depth: number, limits: CopyLimits, name: string): void {
  if (depth + 1 > limits.indexDepth) {
    throw new PermanentError(`${name}: indexes nested more than ${limits.indexDepth} deep (MAX_INDEX_DEPTH)`);
  }
}
