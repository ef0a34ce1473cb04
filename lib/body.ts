// Reading a body whose size someone else controls: never more than a stated number of bytes is
// held. Used for request bodies, manifests, token answers and registry error pages.

export interface BoundedBody {
  readonly bytes: Uint8Array;
  /** The body went on beyond the limit: `bytes` holds only its first `limit` bytes. */
  readonly truncated: boolean;
}

export interface ReadBoundedOptions {
  /** Bytes kept at most. */
  readonly limit: number;
  /**
   * Read (and drop) the rest up to this many bytes in all, so that a client still uploading can
   * read the answer; beyond it the stream is cancelled. Default: cancel at once past `limit`.
   */
  readonly drainUpTo?: number;
}

/** Reads `stream` to its end or past `limit`; a failed read after some bytes keeps what came. */
export async function readBounded(
  stream: ReadableStream<Uint8Array> | null | undefined,
  options: ReadBoundedOptions,
): Promise<BoundedBody> {
  if (!stream) return { bytes: new Uint8Array(0), truncated: false };
  const { limit } = options;
  const drainUpTo = Math.max(options.drainUpTo ?? limit, limit);
  const reader = stream.getReader();
  const chunks: Uint8Array[] = [];
  let kept = 0;
  let seen = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      seen += value.byteLength;
      if (kept < limit) {
        const room = limit - kept;
        const part = value.byteLength > room ? value.subarray(0, room) : value;
        chunks.push(part);
        kept += part.byteLength;
      }
      if (seen > drainUpTo) break;
    }
  } finally {
    if (seen > drainUpTo) await reader.cancel().catch(() => {});
    else reader.releaseLock();
  }
  return { bytes: concat(chunks), truncated: seen > limit };
}

export function concat(chunks: readonly Uint8Array[]): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const total = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}
