// Where results from the clone function enter the bridge, whether they come back in a signed
// callback or in the function's synchronous answer: each is checked against the mapping the
// bridge computes itself, recorded in the ledger, and the workloads waiting for it are enqueued.
// Nothing is patched here: the reconciler does that from the current object (level-triggered). A
// failed copy is told on the workloads that wanted it, as a Warning Event.

import type { Logger } from 'pino';
import {
  FAILURE_REASONS,
  parseReference,
  type BackupLocation,
  type BridgeContext,
  type CloneResult,
} from '../../functions/contract/index.ts';
import type { EventSink } from '../kube/events.ts';
import type { BridgeMetrics } from '../metrics.ts';
import { parseWorkloadKey, type WorkloadReader } from '../workload.ts';
import { copyKey } from './grants.ts';
import type { ImageLedger } from './image-ledger.ts';
import { checkResult, type ResultRejection } from './results.ts';

export interface IntakeOptions {
  readonly backup: BackupLocation;
  readonly ledger: ImageLedger;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
  readonly enqueue: (key: string) => void;
  readonly events: EventSink;
  /** The workloads a failure is told on are looked up here (a deleted one is not told). */
  readonly workloads: WorkloadReader;
}

export interface IntakeSummary {
  readonly accepted: number;
  readonly failed: number;
  readonly rejected: readonly { readonly source: string; readonly reason: ResultRejection; readonly detail: string }[];
  /** Normalised sources this batch settled, one way or another. */
  readonly settled: readonly string[];
}

/** A failed copy as the intake learns of it. */
interface Failure {
  readonly error: string;
  /** What the source said about the image (a result's reason). */
  readonly reason?: string | undefined;
  /** The pull secret whose credentials the request carried, if any. */
  readonly secret?: string | undefined;
}

/** The failure as the workload's owner reads it: what to do where the source asked for credentials. */
function explain(source: string, failure: Failure): string {
  if (failure.reason !== FAILURE_REASONS.sourceUnauthorized) return failure.error;
  let registry: string;
  try {
    registry = parseReference(source).registry;
  } catch {
    return failure.error;
  }
  return failure.secret !== undefined
    ? `${failure.error}; ${registry} refused the credentials of imagePullSecret "${failure.secret}": check that secret`
    : `${failure.error}; ${registry} wants credentials: add an imagePullSecret for ${registry} to the pod template or its ServiceAccount`;
}

export class ResultIntake {
  readonly #options: IntakeOptions;

  constructor(options: IntakeOptions) {
    this.#options = options;
  }

  /**
   * `context` names the workloads the request was made for (callback.context), so results reach
   * them even when this process did not make the request (it restarted since), and the images
   * that carried a workload's credentials: their outcome is kept apart from any other copy's.
   */
  accept(results: readonly CloneResult[], requestContext: BridgeContext): IntakeSummary {
    const { backup, ledger, metrics, logger } = this.#options;
    const keys = new Set((requestContext.workloads ?? []).filter((key) => parseWorkloadKey(key) !== undefined));
    const context = [...keys];
    const grants = requestContext.grants ?? {};
    const keyOf = (source: string) => copyKey(source, grants[source]?.id);
    let accepted = 0;
    let failed = 0;
    const rejected: { source: string; reason: ResultRejection; detail: string }[] = [];
    const settled: string[] = [];

    for (const result of results) {
      const checked = checkResult(result, backup);
      settled.push(checked.source);
      const status = checked.outcome === 'backed-up' ? checked.status : checked.outcome;
      metrics.imageResults.inc({ status });
      const sinceSent = ledger.sinceSent(keyOf(checked.source));
      if (sinceSent !== undefined) metrics.cloneLatency.observe({ status }, sinceSent / 1000);
      if (checked.outcome === 'backed-up') {
        accepted++;
        const waiters = ledger.succeed(keyOf(checked.source), checked.target, checked.digest);
        for (const key of waiters) keys.add(key);
        this.#countByNamespace(status, context, waiters);
        logger.info(
          {
            image: checked.source,
            target: checked.target,
            digest: checked.digest,
            status: checked.status,
            ms: result.ms,
            bytes: result.bytes,
          },
          'Image Cloner: image backed up',
        );
      } else if (checked.outcome === 'failed') {
        failed++;
        const failure = { error: checked.error, reason: result.reason, secret: grants[checked.source]?.secret };
        this.#countByNamespace(status, context, this.#fail(checked.source, keyOf(checked.source), failure, context, keys));
      } else {
        rejected.push({ source: checked.source, reason: checked.reason, detail: checked.detail });
        metrics.callbackRejections.inc({ reason: checked.reason });
        logger.warn({ image: checked.source, reason: checked.reason, detail: checked.detail }, 'Image Cloner: result refused');
        // A refused result is a failed copy as far as the workload is concerned: retried later.
        const failure = { error: `result refused (${checked.reason})` };
        this.#countByNamespace(status, context, this.#fail(checked.source, keyOf(checked.source), failure, context, keys));
      }
    }
    for (const key of keys) this.#options.enqueue(key);
    return { accepted, failed, rejected, settled };
  }

  /** A whole request failed (the function unreachable, an error answer, a cut-off stream). */
  failRequest(sources: readonly string[], error: string, requestContext: BridgeContext): void {
    const context = requestContext.workloads ?? [];
    const keys = new Set<string>(context);
    for (const source of sources)
      this.#fail(source, copyKey(source, requestContext.grants?.[source]?.id), { error }, context, keys);
    for (const key of keys) this.#options.enqueue(key);
  }

  /** Records a failed copy and tells it; returns the workloads that were waiting for it. */
  #fail(source: string, ledgerKey: string, failure: Failure, context: readonly string[], keys: Set<string>): readonly string[] {
    const { error, reason } = failure;
    const { waiters, retryInMs, failures } = this.#options.ledger.fail(ledgerKey, error, reason);
    for (const key of waiters) keys.add(key);
    this.#options.logger.warn({ image: source, error, reason, failures, retryInMs }, 'Image Cloner: cloning failed');
    this.#tellFailure(waiters.length > 0 ? waiters : context, source, explain(source, failure));
    return waiters;
  }

  /** One result, counted once in each namespace whose workloads wanted it (dashboards and alerts per namespace). */
  #countByNamespace(status: string, context: readonly string[], waiters: readonly string[]): void {
    const namespaces = new Set<string>();
    for (const key of [...context, ...waiters]) {
      const namespace = parseWorkloadKey(key)?.namespace;
      if (namespace !== undefined) namespaces.add(namespace);
    }
    for (const namespace of namespaces) this.#options.metrics.namespaceImageResults.inc({ namespace, status });
  }

  /** A Warning Event on each workload that wanted the copy and still exists. */
  #tellFailure(keys: readonly string[], source: string, error: string): void {
    for (const key of keys) {
      const ref = parseWorkloadKey(key);
      const workload = ref && this.#options.workloads.get(ref.kind, ref.namespace, ref.name);
      if (ref === undefined || workload === undefined) continue;
      this.#options.events.record(
        { ...ref, uid: workload.metadata?.uid },
        'Warning',
        'BackupFailed',
        `Backup of ${source} failed: ${error}`,
      );
    }
  }
}
