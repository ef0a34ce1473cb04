// The credentials a workload could pull its images with, the way the kubelet finds them: the
// Secrets its pod spec names in imagePullSecrets, then those of its ServiceAccount. Each Secret
// and ServiceAccount is read by name (the bridge may get Secrets, never list or watch them) and
// kept a short while, so that ten thousand workloads in a namespace cost one read of its default
// ServiceAccount, not ten thousand. A Secret that cannot be read counts as absent; the reads that
// fail are retried soon.

import type { KubeConfig } from '@kubernetes/client-node';
import { describeError } from '../../lib/errors.ts';
import type { PodSpec } from '../workload.ts';
import { API_TIMEOUT_MS, kubeJson, statusCode } from './api.ts';
import { matchingCredentials, pullSecretEntries, type PullCredentials, type PullSecretEntry } from './pull-secret-match.ts';

/** Credentials for one image, and the Secret they come from (for messages; never the values). */
export interface PullGrant {
  readonly credentials: PullCredentials;
  readonly secret: string;
}

export interface PullSecretsOptions {
  readonly kubeConfig: KubeConfig;
  /** How long a Secret or ServiceAccount read is used (default 60 s). */
  readonly ttlMs?: number;
  /** How long a failed read counts as "nothing there" before it is tried again (default 5 s). */
  readonly errorTtlMs?: number;
  /** Cached objects at most (oldest forgotten first; default 20,000). */
  readonly maxEntries?: number;
  readonly onError?: (what: string, error: string) => void;
  readonly now?: () => number;
}

interface Cached<T> {
  readonly value: Promise<T>;
  readonly until: number;
}

type NamedEntry = PullSecretEntry & { readonly secret: string };

export class PullSecrets {
  readonly #options: PullSecretsOptions;
  readonly #now: () => number;
  readonly #cache = new Map<string, Cached<unknown>>();
  /** Reads made, for tests and figures. */
  reads = 0;

  constructor(options: PullSecretsOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** The names of the Secrets a pod spec in `namespace` pulls with, its own first. */
  async secretNames(namespace: string, podSpec: PodSpec | undefined): Promise<string[]> {
    const own = (podSpec?.imagePullSecrets ?? []).flatMap((secret) => (secret?.name ? [secret.name] : []));
    const account = podSpec?.serviceAccountName || 'default';
    const ofAccount = await this.#cached(`sa ${namespace}/${account}`, () => this.#serviceAccountSecrets(namespace, account));
    return [...new Set([...own, ...ofAccount])];
  }

  /**
   * The credentials for an image (registry and repository of a normalised reference) among the
   * Secrets a pod spec pulls with, most specific first; undefined when none applies.
   */
  async grantFor(
    namespace: string,
    secretNames: readonly string[],
    image: { readonly registry: string; readonly repository: string },
  ): Promise<PullGrant | undefined> {
    const entries: NamedEntry[] = [];
    for (const name of secretNames) {
      const found = await this.#cached(`secret ${namespace}/${name}`, () => this.#secretEntries(namespace, name));
      entries.push(...found.map((entry) => ({ ...entry, secret: name })));
    }
    const [first] = matchingCredentials(entries, image);
    if (first === undefined) return undefined;
    const secret = entries.find((entry) => entry.credentials === first)!.secret;
    return { credentials: first, secret };
  }

  async #serviceAccountSecrets(namespace: string, name: string): Promise<string[]> {
    const account = await this.#read<{ imagePullSecrets?: { name?: string }[] }>(
      `/api/v1/namespaces/${encodeURIComponent(namespace)}/serviceaccounts/${encodeURIComponent(name)}`,
    );
    return (account?.imagePullSecrets ?? []).flatMap((secret) => (secret?.name ? [secret.name] : []));
  }

  async #secretEntries(namespace: string, name: string): Promise<PullSecretEntry[]> {
    const secret = await this.#read<{ data?: Record<string, string> }>(
      `/api/v1/namespaces/${encodeURIComponent(namespace)}/secrets/${encodeURIComponent(name)}`,
    );
    return pullSecretEntries(secret?.data);
  }

  /** The object, or undefined when it does not exist; other failures throw (and are cached briefly). */
  async #read<T>(path: string): Promise<T | undefined> {
    this.reads++;
    try {
      return await kubeJson<T>(this.#options.kubeConfig, { method: 'GET', path, timeoutMs: API_TIMEOUT_MS });
    } catch (error) {
      if (statusCode(error) === 404) return undefined;
      throw error;
    }
  }

  /** One read per key and TTL, shared by whoever asks meanwhile; a failure reads as nothing. */
  #cached<T extends unknown[]>(key: string, read: () => Promise<T>): Promise<T> {
    const now = this.#now();
    const hit = this.#cache.get(key);
    if (hit !== undefined && hit.until > now) return hit.value as Promise<T>;
    const { ttlMs = 60_000, errorTtlMs = 5_000, maxEntries = 20_000 } = this.#options;
    const entry: { value: Promise<T>; until: number } = { value: Promise.resolve([] as unknown as T), until: now + ttlMs };
    entry.value = read().catch((error: unknown) => {
      this.#options.onError?.(key, describeError(error));
      entry.until = Math.min(entry.until, this.#now() + errorTtlMs);
      return [] as unknown as T;
    });
    this.#cache.delete(key);
    this.#cache.set(key, entry);
    if (this.#cache.size > maxEntries) this.#cache.delete(this.#cache.keys().next().value!);
    return entry.value;
  }
}
