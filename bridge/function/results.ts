// Checks the results the clone function reported: their shape against the contract, and each one
// against the mapping the bridge computes itself: the function is trusted to copy, never to say
// where a workload should point. Pure.

import { backupReference, cloneResultSchema, type BackupLocation, type CloneResult } from '../../functions/contract/index.ts';
import { formatReference, parseReference, type ImageReference } from '../../functions/contract/index.ts';

export type ResultRejection = 'invalid_source' | 'invalid_digest' | 'digest_mismatch' | 'target_mismatch';

export type CheckedResult =
  | {
      readonly outcome: 'backed-up';
      readonly source: string;
      readonly target: string;
      readonly digest: string;
      readonly status: 'copied' | 'exists';
    }
  | { readonly outcome: 'failed'; readonly source: string; readonly error: string }
  | { readonly outcome: 'rejected'; readonly source: string; readonly reason: ResultRejection; readonly detail: string };

const DIGEST = /^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$/;

/** The entries of a results list that are results by the contract, and how many were not. */
export function parseResults(entries: readonly unknown[]): { results: CloneResult[]; malformed: number } {
  const results: CloneResult[] = [];
  for (const entry of entries) {
    const parsed = cloneResultSchema.safeParse(entry);
    if (parsed.success) results.push(parsed.data);
  }
  return { results, malformed: entries.length - results.length };
}

/** Where the backup of `source` with manifest `digest` must be: `registry/repo:tag@digest`. */
export function expectedTarget(source: ImageReference, digest: string, backup: BackupLocation): string {
  return `${formatReference(backupReference(source, backup))}@${digest}`;
}

export function checkResult(result: CloneResult, backup: BackupLocation): CheckedResult {
  let reference: ImageReference;
  try {
    reference = parseReference(result.source);
  } catch (error) {
    // The function echoes an unparseable input as given; it can only have failed.
    if (result.status === 'failed') return { outcome: 'failed', source: result.source, error: result.error ?? 'failed' };
    return { outcome: 'rejected', source: result.source, reason: 'invalid_source', detail: (error as Error).message };
  }
  const source = formatReference(reference);
  if (result.status === 'failed') return { outcome: 'failed', source, error: result.error ?? 'failed' };

  const digest = result.digest ?? '';
  if (!DIGEST.test(digest)) {
    return {
      outcome: 'rejected',
      source,
      reason: 'invalid_digest',
      detail: `digest "${digest.slice(0, 80)}" is not a valid digest`,
    };
  }
  if (reference.digest !== undefined && reference.digest !== digest) {
    return {
      outcome: 'rejected',
      source,
      reason: 'digest_mismatch',
      detail: `source is pinned to ${reference.digest}, result says ${digest}`,
    };
  }
  const expected = expectedTarget(reference, digest, backup);
  if (result.target !== expected) {
    return {
      outcome: 'rejected',
      source,
      reason: 'target_mismatch',
      detail: `expected ${expected}, got ${String(result.target).slice(0, 300)}`,
    };
  }
  return { outcome: 'backed-up', source, target: expected, digest, status: result.status };
}
