import type { HttpResponse } from './auth.ts';
import { isRetryableStatus, parseRetryAfter, type RetryVerdict } from './retry.ts';

const ERROR_BODY_LIMIT = 4096;

/** A registry answered with an unexpected status. The message never carries URLs or credentials. */
export class RegistryError extends Error {
  readonly status: number;
  readonly code: string | undefined;
  readonly retryAfterMs: number | undefined;

  constructor(message: string, status: number, code?: string, retryAfterMs?: number) {
    super(message);
    this.name = 'RegistryError';
    this.status = status;
    this.code = code;
    this.retryAfterMs = retryAfterMs;
  }

  /** Reads the registry's error body ({"errors":[{code,message}]}) into a readable message. */
  static async fromResponse(response: HttpResponse, what: string): Promise<RegistryError> {
    const text = await readLimited(response, ERROR_BODY_LIMIT);
    let code: string | undefined;
    let detail = '';
    try {
      const parsed = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> };
      const first = parsed.errors?.[0];
      if (first) {
        code = first.code;
        detail = [first.code, first.message].filter(Boolean).join(': ');
      }
    } catch {
      detail = text.replace(/\s+/g, ' ').trim().slice(0, 200);
    }
    const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
    const message = `${what}: HTTP ${response.status}${detail ? ` (${detail})` : ''}`;
    return new RegistryError(message, response.status, code, retryAfterMs);
  }
}

/** A failure that trying again cannot mend (a digest mismatch, a manifest too large, …). */
export class PermanentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentError';
  }
}

export class DigestMismatchError extends PermanentError {
  constructor(what: string, expected: string, actual: string) {
    super(`${what}: content does not match its digest (expected ${expected}, got ${actual})`);
    this.name = 'DigestMismatchError';
  }
}

/**
 * Registry errors are retried on 408/429/5xx; our own permanent errors never; anything else is a
 * transport failure (reset, dropped connection, DNS) and retried.
 */
export function classifyError(error: unknown): RetryVerdict {
  if (error instanceof RegistryError) {
    return {
      retry: isRetryableStatus(error.status),
      ...(error.retryAfterMs !== undefined && { retryAfterMs: error.retryAfterMs }),
    };
  }
  if (error instanceof PermanentError) return { retry: false };
  if (error instanceof Error && error.name === 'AbortError') return { retry: false };
  return { retry: true };
}

/** Reads at most `limit` bytes of a body as text and drops the rest. */
export async function readLimited(response: HttpResponse, limit: number): Promise<string> {
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < limit) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // A broken error body still leaves the status to report.
  } finally {
    reader.cancel().catch(() => {});
  }
  return new TextDecoder().decode(concat(chunks).subarray(0, limit));
}

export function concat(chunks: Uint8Array[]): Uint8Array {
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

/** Describes an error for a result or a log line: one line, no stack. */
export function describeError(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? `: ${error.cause.message}` : '';
    return `${error.message}${cause}`;
  }
  return String(error);
}
