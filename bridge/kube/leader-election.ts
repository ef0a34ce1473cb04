// Leader election on a coordination.k8s.io/v1 Lease, the protocol client-go's leaderelection
// package uses (client-node has none): the holder renews the lease every few seconds; the others
// take it over only once they have seen it unchanged for a whole lease duration, measured on their
// own clock (never compared with the holder's timestamps, so clock skew does not matter). A holder
// that cannot renew within the renew deadline steps down before anyone may take over, because
// the deadline is shorter than the duration.

import type { KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { describeError } from '../../lib/errors.ts';
import { kubeJson, statusCode, type KubeRequest } from './api.ts';

export interface LeaderElectionOptions {
  readonly kubeConfig: KubeConfig;
  readonly namespace: string;
  readonly name: string;
  readonly identity: string;
  readonly logger: Logger;
  readonly leaseDurationMs?: number;
  readonly renewDeadlineMs?: number;
  readonly retryPeriodMs?: number;
  /** Called when this replica becomes the leader; leadership lasts until `onStoppedLeading`. */
  readonly onStartedLeading: () => void | Promise<void>;
  readonly onStoppedLeading: () => void | Promise<void>;
}

/** The fields of a coordination.k8s.io/v1 Lease this protocol reads and writes; the rest is passed through. */
interface Lease {
  metadata?: { name?: string; namespace?: string; resourceVersion?: string };
  spec?: {
    holderIdentity?: string;
    leaseDurationSeconds?: number;
    /** MicroTime: RFC 3339 with microseconds. */
    acquireTime?: string;
    renewTime?: string;
    leaseTransitions?: number;
  };
}

/** A MicroTime as the API server writes it: RFC 3339 with six fractional digits. */
function microTime(ms: number): string {
  return new Date(ms).toISOString().replace(/Z$/, '000Z');
}

export class LeaderElector {
  readonly #options: LeaderElectionOptions;
  readonly #leaseDurationMs: number;
  readonly #renewDeadlineMs: number;
  readonly #retryPeriodMs: number;
  #observed: { holder: string; renewTime: string; resourceVersion: string } | undefined;
  #observedAt = 0;
  #leading = false;
  #stopped = false;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;

  constructor(options: LeaderElectionOptions) {
    this.#options = options;
    this.#leaseDurationMs = options.leaseDurationMs ?? 15_000;
    this.#renewDeadlineMs = options.renewDeadlineMs ?? 10_000;
    this.#retryPeriodMs = options.retryPeriodMs ?? 2_000;
    if (this.#renewDeadlineMs >= this.#leaseDurationMs)
      throw new Error('the renew deadline must be shorter than the lease duration');
  }

  get leading(): boolean {
    return this.#leading;
  }

  /** Runs for election until stop(); leadership lost is leadership sought again. */
  start(): void {
    this.#loop ??= this.#run();
  }

  /** Stops competing; a leader steps down (callbacks run) and releases the lease for a fast handover. */
  async stop(): Promise<void> {
    this.#stopped = true;
    this.#wake?.();
    await this.#loop;
  }

  async #run(): Promise<void> {
    const { logger, identity } = this.#options;
    while (!this.#stopped) {
      if (!(await this.#tryAcquireOrRenew())) {
        await this.#sleep(this.#jittered(this.#retryPeriodMs));
        continue;
      }
      this.#leading = true;
      logger.info({ lease: this.#options.name, identity }, 'became the leader');
      await this.#options.onStartedLeading();
      let lastRenew = Date.now();
      while (!this.#stopped) {
        await this.#sleep(this.#retryPeriodMs);
        if (this.#stopped) break;
        if (await this.#tryAcquireOrRenew()) {
          lastRenew = Date.now();
        } else if (Date.now() - lastRenew >= this.#renewDeadlineMs) {
          logger.warn({ lease: this.#options.name, identity }, 'could not renew the lease in time; stepping down');
          break;
        }
      }
      this.#leading = false;
      logger.info({ lease: this.#options.name, identity }, 'stopped leading');
      await this.#options.onStoppedLeading();
      if (this.#stopped) await this.#release();
    }
  }

  async #tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name, identity, logger } = this.#options;
    const now = Date.now();
    const durationSeconds = Math.ceil(this.#leaseDurationMs / 1000);
    let lease: Lease;
    try {
      lease = await this.#call({ method: 'GET', path: this.#leasePath(), timeoutMs: this.#renewDeadlineMs });
    } catch (error) {
      if (statusCode(error) !== 404) {
        logger.debug({ lease: name, error: describeError(error) }, 'lease not readable');
        return false;
      }
      return this.#write(
        {
          method: 'POST',
          path: this.#leasePath(false),
          body: {
            apiVersion: 'coordination.k8s.io/v1',
            kind: 'Lease',
            metadata: { name, namespace },
            spec: {
              holderIdentity: identity,
              leaseDurationSeconds: durationSeconds,
              acquireTime: microTime(now),
              renewTime: microTime(now),
              leaseTransitions: 0,
            },
          },
          timeoutMs: this.#renewDeadlineMs,
        },
        'lease not created',
      );
    }

    const spec = lease.spec ?? {};
    const holder = spec.holderIdentity ?? '';
    this.#observe(lease, now);
    const heldByOther = holder !== '' && holder !== identity;
    const durationMs = (spec.leaseDurationSeconds ?? durationSeconds) * 1000;
    if (heldByOther && this.#observedAt + durationMs > now) return false;

    const renewing = holder === identity;
    const updated: Lease = {
      ...lease,
      spec: {
        ...spec,
        holderIdentity: identity,
        leaseDurationSeconds: durationSeconds,
        renewTime: microTime(now),
        acquireTime: renewing && spec.acquireTime !== undefined ? spec.acquireTime : microTime(now),
        leaseTransitions: (spec.leaseTransitions ?? 0) + (renewing ? 0 : 1),
      },
    };
    // The update carries the resourceVersion just read: if anyone wrote in between, it fails (409).
    return this.#write(
      { method: 'PUT', path: this.#leasePath(), body: updated, timeoutMs: this.#renewDeadlineMs },
      'lease not updated',
    );
  }

  /** Creates or replaces the lease; true when it is ours now. */
  async #write(request: KubeRequest, failure: string): Promise<boolean> {
    try {
      this.#observe(await this.#call(request), Date.now());
      return true;
    } catch (error) {
      this.#options.logger.debug({ lease: this.#options.name, error: describeError(error) }, failure);
      return false;
    }
  }

  /** Notes the lease's record; the local clock starts over whenever the record changes. */
  #observe(lease: Lease, at: number): void {
    const record = {
      holder: lease.spec?.holderIdentity ?? '',
      renewTime: lease.spec?.renewTime ?? '',
      resourceVersion: lease.metadata?.resourceVersion ?? '',
    };
    const previous = this.#observed;
    if (
      previous === undefined ||
      previous.holder !== record.holder ||
      previous.renewTime !== record.renewTime ||
      previous.resourceVersion !== record.resourceVersion
    ) {
      this.#observed = record;
      this.#observedAt = at;
    }
  }

  /** Gives the lease up so that another replica need not wait for it to expire. */
  async #release(): Promise<void> {
    const { name, identity, logger } = this.#options;
    try {
      const lease = await this.#call({ method: 'GET', path: this.#leasePath(), timeoutMs: 5_000 });
      if (lease.spec?.holderIdentity !== identity) return;
      const now = microTime(Date.now());
      await this.#call({
        method: 'PUT',
        path: this.#leasePath(),
        body: {
          ...lease,
          spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: now, acquireTime: now },
        },
        timeoutMs: 5_000,
      });
      logger.info({ lease: name, identity }, 'released the lease');
    } catch (error) {
      logger.warn({ lease: name, error: describeError(error) }, 'could not release the lease; it expires on its own');
    }
  }

  /** The lease's path, or with `named` false its collection's (where it is created). */
  #leasePath(named = true): string {
    const { namespace, name } = this.#options;
    const collection = `/apis/coordination.k8s.io/v1/namespaces/${encodeURIComponent(namespace)}/leases`;
    return named ? `${collection}/${encodeURIComponent(name)}` : collection;
  }

  #call(request: KubeRequest): Promise<Lease> {
    return kubeJson<Lease>(this.#options.kubeConfig, request);
  }

  #jittered(ms: number): number {
    return Math.round(ms * (1 + Math.random() * 0.2));
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#wake = undefined;
        resolve();
      }, ms);
      this.#wake = () => {
        clearTimeout(timer);
        this.#wake = undefined;
        resolve();
      };
    });
  }
}
