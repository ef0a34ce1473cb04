// Content digests, computed while bytes stream by. node:crypto hashing works in Node and in
// workerd (nodejs_compat), so this stays portable.

import { createHash } from 'node:crypto';
import { DigestMismatchError, PermanentError } from './errors.ts';

const ALGORITHMS: Record<string, string> = { sha256: 'sha256', sha512: 'sha512' };

function hashName(digest: string): string {
  const algorithm = ALGORITHMS[digest.slice(0, digest.indexOf(':'))];
  if (!algorithm) throw new PermanentError(`unsupported digest algorithm in ${digest}`);
  return algorithm;
}

/** The digest of some bytes, with the algorithm of `like` (sha256 by default). */
export function digestOf(bytes: Uint8Array, like = 'sha256:'): string {
  const algorithm = hashName(like);
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

/**
 * Passes bytes through while hashing them, and errors the stream instead of letting the last chunk
 * out when the content is not `size` bytes hashing to `digest`: a receiver (an upload) never gets a
 * complete body of the wrong content. `failure` keeps the error, because an HTTP client that was
 * reading the stream reports its own error instead.
 */
export class DigestVerifier {
  readonly stream: TransformStream<Uint8Array, Uint8Array>;
  failure: Error | undefined;
  /** The whole content went by and matched. */
  verified = false;

  constructor(digest: string, size: number, what: string, onBytes?: (done: number) => void) {
    const algorithm = hashName(digest);
    const hash = createHash(algorithm);
    let done = 0;
    let held: Uint8Array | undefined;
    const fail = (error: Error) => {
      this.failure = error;
      throw error;
    };
    this.stream = new TransformStream({
      transform: (chunk, controller) => {
        done += chunk.byteLength;
        if (done > size) fail(new DigestMismatchError(what, `${size} bytes`, 'more'));
        hash.update(chunk);
        if (held) controller.enqueue(held);
        held = chunk;
        onBytes?.(done);
      },
      flush: (controller) => {
        if (done !== size) fail(new DigestMismatchError(what, `${size} bytes`, `${done} bytes`));
        const actual = `${algorithm}:${hash.digest('hex')}`;
        if (actual !== digest) fail(new DigestMismatchError(what, digest, actual));
        this.verified = true;
        if (held) controller.enqueue(held);
      },
    });
  }
}
