// What goes wrong talking to a registry, and whether trying again can help.

import { readBounded } from '../../lib/body.ts';
import type { HttpResponse } from './http.ts';
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
    const text = await errorBody(response);
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

/** The first few KiB of an error answer; a broken body still leaves the status to report. */
async function errorBody(response: HttpResponse): Promise<string> {
  try {
    const { bytes } = await readBounded(response.body, { limit: ERROR_BODY_LIMIT });
    return new TextDecoder().decode(bytes);
  } catch {
    return '';
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
