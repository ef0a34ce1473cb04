// What goes wrong talking to a registry, and whether trying again can help.

import { readBounded } from '../../lib/body.ts';
import { describeError } from '../../lib/errors.ts';
import { printable } from '../../lib/text.ts';
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

  /**
   * Names what failed by the status and, when the body is a registry's error document
   * ({"errors":[{code,message}]}), its first code and message, escaped and bounded. Anything else
   * the server sent (an HTML page, a banner of whatever answered) is never repeated: the message
   * may end up in a tenant's Event.
   */
  static async fromResponse(response: HttpResponse, what: string): Promise<RegistryError> {
    const body = await errorBody(response);
    const error = registryErrorOf(body);
    // An empty body (a HEAD's answer) says nothing either way.
    const detail =
      error !== undefined
        ? [error.code, error.message].filter(Boolean).join(': ')
        : body.trim() === ''
          ? ''
          : 'not a registry response';
    const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
    const message = `${what}: HTTP ${response.status}${detail ? ` (${detail})` : ''}`;
    return new RegistryError(message, response.status, error?.code, retryAfterMs);
  }
}

/** The first error of a distribution error document, escaped; undefined when the body is not one. */
function registryErrorOf(text: string): { code: string | undefined; message: string | undefined } | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return undefined;
  }
  const errors = (parsed as { errors?: unknown } | null)?.errors;
  if (!Array.isArray(errors)) return undefined;
  const first = errors[0] as { code?: unknown; message?: unknown } | undefined;
  const code = typeof first?.code === 'string' && /^[A-Z0-9_]{1,64}$/.test(first.code) ? first.code : undefined;
  const message = typeof first?.message === 'string' ? printable(first.message, 200) : undefined;
  return { code, message };
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

/**
 * A registry could not be reached, or the connection broke. The message says only that; the
 * reason (refused, reset, TLS) is `detail`, for the operator's log.
 */
export class TransportError extends Error {
  readonly detail: string;

  constructor(message: string, cause: unknown) {
    super(message);
    this.name = 'TransportError';
    this.detail = describeError(cause);
  }
}

/** Bytes stopped flowing (or an answer did not come) for the stall time: retried, then failed. */
export class StallError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StallError';
  }
}

/** For a log line: what an error keeps back from its message (a TransportError's reason). */
export function errorDetail(error: unknown): string | undefined {
  return error instanceof TransportError ? error.detail : undefined;
}

/** A failure that trying again cannot mend (a digest mismatch, a manifest too large, …). */
export class PermanentError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PermanentError';
  }
}

/** The registry does not have it (404): a tag, a manifest, the repository itself. */
export class NotFoundError extends PermanentError {
  constructor(message: string) {
    super(message);
    this.name = 'NotFoundError';
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
