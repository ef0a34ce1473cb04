// The label that routes the bridge's Service to the leader. Every replica is Ready (a standby is
// a healthy pod: rolling updates can surge and a PodDisruptionBudget counts it), but only the
// leader can apply callbacks, so the Service selects `image-clone-controller.io/leader: "true"`
// besides the bridge's own labels, and the leader puts that label on its own Pod. It comes off
// when the replica steps down or shuts down, and at start (a container restarted in the same Pod
// may find the label its predecessor left). Followers never carry it.
//
// The label is applied in the background and retried until it holds what leadership says, so an
// API server that is slow for a moment delays routing, never leadership. The admission guardrails
// (k8s/rbac/06-admission-guardrails.yml) allow the bridge's ServiceAccount exactly this label
// change, on Pods of its own namespace that run as that ServiceAccount.

import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeError } from '../../lib/errors.ts';
import { kubeJson, statusCode } from './api.ts';

export const LEADER_LABEL = 'image-clone-controller.io/leader';

export interface LeaderLabelOptions {
  readonly kubeConfig: KubeConfig;
  /** This replica's Pod (the downward API's POD_NAMESPACE and POD_NAME). */
  readonly namespace: string;
  readonly pod: string;
  readonly logger: Logger;
  /** First retry after a failed write; doubles up to maxRetryMs. */
  readonly retryMs?: number;
  readonly maxRetryMs?: number;
}

const WRITE_TIMEOUT_MS = 10_000;

export class LeaderLabel {
  readonly #options: LeaderLabelOptions;
  /** What leadership says the Pod should carry. */
  #wanted = false;
  /** What the Pod carries as far as this replica knows (undefined: not known yet). */
  #applied: boolean | undefined;
  #running: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #gone = false;

  constructor(options: LeaderLabelOptions) {
    this.#options = options;
  }

  /** Sets (true) or removes (false) the label on this replica's Pod, in the background. */
  set(leading: boolean): void {
    if (leading !== this.#wanted) this.#wake?.();
    this.#wanted = leading;
    if (this.#applied !== leading && !this.#gone) this.#running ??= this.#apply().finally(() => (this.#running = undefined));
  }

  /** Resolves once the Pod carries what was last set, or after `timeoutMs` (shutdown must not hang). */
  async settled(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.#running, new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
  }

  async #apply(): Promise<void> {
    const { logger, namespace, pod } = this.#options;
    let delay = this.#options.retryMs ?? 1_000;
    let failures = 0;
    while (this.#applied !== this.#wanted) {
      const wanted = this.#wanted;
      try {
        await this.#patch(wanted);
        this.#applied = wanted;
        logger.info({ pod, label: LEADER_LABEL, set: wanted }, wanted ? 'leader label set' : 'leader label removed');
        failures = 0;
      } catch (error) {
        if (statusCode(error) === 404) {
          // No such Pod: POD_NAME does not name this replica's Pod. Nothing to route to either.
          logger.warn({ pod, namespace, label: LEADER_LABEL }, 'own Pod not found; the leader label is not maintained');
          this.#gone = true;
          return;
        }
        failures++;
        logger[failures === 1 ? 'warn' : 'debug'](
          { pod, label: LEADER_LABEL, set: wanted, error: describeError(error), retryInMs: delay },
          'leader label not written; retrying',
        );
        await this.#sleep(delay);
        delay = Math.min(delay * 2, this.#options.maxRetryMs ?? 30_000);
      }
    }
  }

  /** A JSON merge patch of the one label: null removes it (and is a no-op when it is absent). */
  #patch(leading: boolean): Promise<unknown> {
    const { kubeConfig, namespace, pod } = this.#options;
    return kubeJson(kubeConfig, {
      method: 'PATCH',
      path: `/api/v1/namespaces/${encodeURIComponent(namespace)}/pods/${encodeURIComponent(pod)}`,
      body: { metadata: { labels: { [LEADER_LABEL]: leading ? 'true' : null } } },
      contentType: 'application/merge-patch+json',
      timeoutMs: WRITE_TIMEOUT_MS,
    });
  }

  /** Waits `ms`, or less when leadership changes meanwhile (the next write is the new state). */
  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#wake = done;
    });
  }
}
