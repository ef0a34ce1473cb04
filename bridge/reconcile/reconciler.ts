// reconcile(key): read the workload as it is now, decide what it still needs, do that much, and
// say when to look again. It never trusts the event that enqueued the key nor its own memory of
// the object; a patch that no longer fits the object fails on its `test` operations and the next
// attempt reads the object from the API server rather than from a possibly stale cache.

import type { Logger } from 'pino';
import { describeError } from '../../lib/errors.ts';
import type { CloneClient } from '../function/clone-client.ts';
import type { ImageLedger } from '../function/image-ledger.ts';
import { isStale, statusCode, type WorkloadApi } from '../kube/api.ts';
import type { EventSink } from '../kube/events.ts';
import type { BridgeMetrics } from '../metrics.ts';
import {
  parseWorkloadKey,
  podSpecOf,
  PROTECTED_NAMESPACE,
  type Workload,
  type WorkloadKind,
  type WorkloadReader,
  type WorkloadRef,
} from '../workload.ts';
import { FAILURE_REASONS, formatReference, isBackupImage, parseReference } from '../../functions/contract/index.ts';
import { GrantIds, type CopyOrder } from '../function/grants.ts';
import type { PullSecrets } from '../kube/pull-secrets.ts';
import { decide, imageSlots, type Decision, type DecisionContext, type SlotState } from './decide.ts';

/** Workloads whose BackedUp Event is remembered (oldest forgotten first: an Event told again). */
const MAX_ANNOUNCED = 100_000;
import type { Outcome } from './work-queue.ts';

export interface ReconcilerOptions {
  readonly apis: Readonly<Partial<Record<WorkloadKind, WorkloadApi>>>;
  readonly cache: WorkloadReader;
  readonly decision: Omit<DecisionContext, 'knownBackup' | 'goneAtSource'>;
  /**
   * The credentials a workload could pull its images with (its pull secrets); absent: every copy
   * is asked for without credentials.
   */
  readonly pullSecrets?: Pick<PullSecrets, 'secretNames' | 'grantFor'>;
  readonly grantIds?: GrantIds;
  /** Why a workload's credentials may not go to the function (plain HTTP outside the cluster). */
  readonly credentialsWithheld?: string;
  readonly ledger: ImageLedger;
  readonly cloneClient: Pick<CloneClient, 'request'>;
  readonly events: EventSink;
  readonly metrics: BridgeMetrics;
  readonly logger: Logger;
}

/** The patch no longer matches the object; retried (with backoff) from a fresh read. */
export class StaleWorkloadError extends Error {
  constructor(key: string, cause: unknown) {
    super(`${key} changed since it was read: ${describeError(cause)}`, { cause });
    this.name = 'StaleWorkloadError';
  }
}

export class Reconciler {
  readonly #options: ReconcilerOptions;
  readonly #grantIds: GrantIds;
  /** Keys whose next reconcile reads from the API server: the cache was behind last time. */
  readonly #readFresh = new Set<string>();
  /**
   * The resourceVersion each workload was last patched from. Until the watch delivers the patched
   * object, the cache still holds that version; acting on it would only earn a refused patch.
   */
  readonly #patchedFrom = new Map<string, string>();
  /** What each backed-up-only workload (by uid) was last told about its copies. */
  readonly #announced = new Map<string, string>();

  constructor(options: ReconcilerOptions) {
    this.#options = options;
    this.#grantIds = options.grantIds ?? new GrantIds();
  }

  async reconcile(key: string): Promise<Outcome> {
    const ref = parseWorkloadKey(key);
    if (ref === undefined) return {};
    const { apis, cache, logger, ledger } = this.#options;
    const api = apis[ref.kind];
    if (api === undefined) return {}; // a kind not watched (any more)
    let workload = this.#readFresh.delete(key)
      ? await api.read(ref.namespace, ref.name)
      : cache.get(ref.kind, ref.namespace, ref.name);
    const patchedFrom = this.#patchedFrom.get(key);
    if (patchedFrom !== undefined) {
      this.#patchedFrom.delete(key);
      if (workload?.metadata?.resourceVersion === patchedFrom) workload = await api.read(ref.namespace, ref.name);
    }
    if (workload === undefined) return {};

    const orders = await this.#copyOrders(ref, workload);
    const orderOf = (source: string) => orders.get(source) ?? { source, key: source };
    const decision = decide(ref.kind, workload, {
      ...this.#options.decision,
      // A copy made with other credentials never serves this workload; one made without any does
      // (its image was public, or the function's own credentials cover its registry).
      knownBackup: (source) => ledger.backupOf(orderOf(source).key) ?? ledger.backupOf(source),
      goneAtSource: (source) => ledger.failureReason(orderOf(source).key) === FAILURE_REASONS.sourceNotFound,
    });
    const fields = { kind: ref.kind, namespace: ref.namespace, name: ref.name };
    if (decision.action !== 'ignore' && decision.mode === 'backup-only') this.#announceBackups(ref, workload, decision.slots);
    if (decision.action === 'none') {
      logger.trace(fields, `${ref.kind} reconciler: nothing to do`);
      return {};
    }
    if (decision.action === 'ignore') {
      if (decision.patch.length === 0) return {};
      logger.info({ ...fields, reason: decision.reason }, `${ref.kind} reconciler: releasing an ignored workload`);
      if (await this.#patch(key, ref, api, workload, decision))
        logger.info(fields, `${ref.kind} reconciler: reconciliation successfully finished`);
      return {};
    }

    for (const slot of decision.slots) {
      // Logged when something is about to happen to the image (a request, a patch), not on every
      // look at a workload that is only waiting for a copy.
      const acting = slot.state === 'known' || (slot.state === 'missing' && ledger.status(slot.source).state === 'unknown');
      if (acting) {
        logger.info(
          { ...fields, image: slot.slot.image, container: slot.slot.container },
          `${ref.kind} reconciler: starting reconciliation`,
        );
      } else if (slot.state === 'invalid') {
        logger.warn(
          { ...fields, image: slot.slot.image, error: slot.error },
          `${ref.kind} reconciler: image reference cannot be backed up`,
        );
        this.#options.events.record(
          { ...ref, uid: workload.metadata?.uid, resourceVersion: workload.metadata?.resourceVersion },
          'Warning',
          'InvalidImage',
          `Container ${slot.slot.container}: ${slot.error}; not backed up`,
        );
      }
    }

    let recheckInMs: number | undefined;
    if (decision.copy.length > 0) {
      recheckInMs = this.#options.cloneClient.request(key, decision.copy.map(orderOf)).recheckInMs;
    }
    if (decision.patch.length > 0) {
      const applied = await this.#patch(key, ref, api, workload, decision);
      if (applied && decision.settled) logger.info(fields, `${ref.kind} reconciler: reconciliation successfully finished`);
    }
    return recheckInMs === undefined ? {} : { requeueAfterMs: recheckInMs };
  }

  /**
   * For each source image the workload does not run from the backup yet: the copy it needs, with
   * the credentials of its pull secrets where one applies to the image's registry (the kubelet's
   * rules). Nothing is read for a workload that needs no copy, nor in a namespace never written.
   */
  async #copyOrders(ref: WorkloadRef, workload: Workload): Promise<Map<string, CopyOrder>> {
    const orders = new Map<string, CopyOrder>();
    const { pullSecrets, decision } = this.#options;
    if (pullSecrets === undefined || ref.namespace === PROTECTED_NAMESPACE || decision.ignoredNamespaces.has(ref.namespace)) {
      return orders;
    }
    const sources = imageSlots(ref.kind, workload).flatMap((slot) => {
      try {
        const reference = parseReference(slot.image);
        return isBackupImage(reference, decision.backup) ? [] : [reference];
      } catch {
        return [];
      }
    });
    if (sources.length === 0) return orders;
    const secretNames = await pullSecrets.secretNames(ref.namespace, podSpecOf(ref.kind, workload));
    if (secretNames.length === 0) return orders;
    for (const reference of sources) {
      const source = formatReference(reference);
      if (orders.has(source)) continue;
      const grant = await pullSecrets.grantFor(ref.namespace, secretNames, reference);
      if (grant !== undefined && this.#options.credentialsWithheld !== undefined) {
        this.#options.events.record(
          { ...ref, uid: workload.metadata?.uid },
          'Warning',
          'CredentialsWithheld',
          `The credentials of imagePullSecret "${grant.secret}" for ${reference.registry} are not sent: ${this.#options.credentialsWithheld}; ${source} is copied without them`,
        );
        continue;
      }
      orders.set(source, this.#grantIds.order(source, grant));
    }
    return orders;
  }

  /**
   * A workload backed up but left as it is (backup-only, a Job, a Pod) hears once, in a Normal
   * Event, where its images' copies are: when all are copied, and again when they change.
   */
  #announceBackups(ref: WorkloadRef, workload: Workload, slots: readonly SlotState[]): void {
    if (slots.some((slot) => slot.state === 'missing')) return;
    const copies = slots.flatMap((slot) => (slot.state === 'known' ? [`${slot.slot.image} → ${slot.target}`] : []));
    const uid = workload.metadata?.uid;
    if (copies.length === 0 || uid === undefined) return;
    const said = copies.join(', ');
    if (this.#announced.get(uid) === said) return;
    this.#announced.delete(uid);
    this.#announced.set(uid, said);
    if (this.#announced.size > MAX_ANNOUNCED) this.#announced.delete(this.#announced.keys().next().value!);
    this.#options.logger.info(
      { kind: ref.kind, namespace: ref.namespace, name: ref.name, images: copies.length },
      `${ref.kind} reconciler: images backed up, workload left as it is`,
    );
    this.#options.events.record(
      { ...ref, uid, resourceVersion: workload.metadata?.resourceVersion },
      'Normal',
      'BackedUp',
      `Images backed up (the workload is left as it is): ${said}`,
    );
  }

  /** Applies the decision's patch; false when the object is gone. Throws StaleWorkloadError. */
  async #patch(
    key: string,
    ref: WorkloadRef,
    api: WorkloadApi,
    workload: Workload,
    decision: Exclude<Decision, { action: 'none' }>,
  ): Promise<boolean> {
    const { metrics, logger, events } = this.#options;
    const started = Date.now();
    try {
      await api.patch(ref.namespace, ref.name, decision.patch);
    } catch (error) {
      if (statusCode(error) === 404) {
        metrics.patches.inc({ kind: ref.kind, result: 'gone' });
        return false;
      }
      if (isStale(error)) {
        metrics.patches.inc({ kind: ref.kind, result: 'conflict' });
        this.#readFresh.add(key);
        logger.info(
          { kind: ref.kind, namespace: ref.namespace, name: ref.name, error: describeError(error) },
          `${ref.kind} reconciler: workload changed meanwhile; retrying from the current object`,
        );
        throw new StaleWorkloadError(key, error);
      }
      metrics.patches.inc({ kind: ref.kind, result: 'error' });
      throw error;
    }
    metrics.patches.inc({ kind: ref.kind, result: 'applied' });
    const version = workload.metadata?.resourceVersion;
    if (version !== undefined) this.#patchedFrom.set(key, version);
    const ms = Date.now() - started;
    const object = { ...ref, uid: workload.metadata?.uid, resourceVersion: workload.metadata?.resourceVersion };
    if (decision.action === 'ignore') {
      logger.info({ kind: ref.kind, namespace: ref.namespace, name: ref.name, ms }, `${ref.kind} reconciler: finalizer released`);
      events.record(
        object,
        'Normal',
        'Released',
        `Not backed up (${decision.reason === 'opt-out' ? 'opted out' : 'namespace ignored'}); finalizer removed`,
      );
      return true;
    }
    for (const replacement of decision.replacements) {
      const slot = decision.slots.find((candidate) => candidate.slot.path === replacement.path);
      const digest = replacement.to.slice(replacement.to.lastIndexOf('@') + 1);
      logger.info(
        {
          kind: ref.kind,
          namespace: ref.namespace,
          name: ref.name,
          image: replacement.from,
          target: replacement.to,
          digest,
          container: slot?.slot.container,
          ms,
        },
        `${ref.kind} reconciler: image pointed at its backup`,
      );
    }
    if (decision.replacements.length > 0) {
      const list = decision.replacements.map((replacement) => `${replacement.from} → ${replacement.to}`).join(', ');
      events.record(object, 'Normal', 'BackedUp', `Images backed up and pinned: ${list}`);
    }
    if (decision.releaseFinalizer && decision.releasedGone.length > 0) {
      logger.warn(
        { kind: ref.kind, namespace: ref.namespace, name: ref.name, images: decision.releasedGone },
        `${ref.kind} reconciler: finalizer released, images gone at the source`,
      );
      events.record(
        object,
        'Warning',
        'Released',
        `Not backed up: ${decision.releasedGone.join(', ')} gone at the source (no such tag, manifest or repository); nothing left to protect, finalizer removed, deletion proceeds`,
      );
    } else if (decision.releaseFinalizer) {
      logger.info({ kind: ref.kind, namespace: ref.namespace, name: ref.name }, `${ref.kind} reconciler: finalizer released`);
      events.record(
        object,
        'Normal',
        'Released',
        decision.deleting ? 'Images backed up; finalizer removed, deletion proceeds' : 'All images backed up; finalizer removed',
      );
    }
    return true;
  }
}
