// Assembles the copy engine from the configuration and the runtime's pieces (fetch, how a stream
// keeps its length, a logger). Portable: the Node and Worker entry points both call this.

import type { ECRClientConfig } from '@aws-sdk/client-ecr';
import { describeError } from '../lib/errors.ts';
import { mapLimit } from '../lib/semaphore.ts';
import type { FunctionConfig } from './config.ts';
import { registryApiHost, type CloneEvent, type CloneResult } from './contract/index.ts';
import { BlobCopier, KnownBlobs, type Runtime } from './copy/blob.ts';
import { ImageCopier } from './copy/image.ts';
import { TreeCopier } from './copy/tree.ts';
import { Ecr } from './ecr.ts';
import type { Logger } from './log.ts';
import { RegistryClient } from './registry/client.ts';
import { StaticCredentials, type CredentialSource } from './registry/credentials.ts';
import type { FetchLike } from './registry/http.ts';
import { Repository } from './registry/repository.ts';
import { DEFAULT_RETRY_POLICY, type RetryPolicy } from './registry/retry.ts';

/** Hooks for metrics; every one optional. */
export interface EngineObserver {
  cloneStarted?(): void;
  cloneFinished?(result: CloneResult): void;
  retried?(info: { registry?: string; what: string }): void;
}

export interface EngineOptions {
  readonly config: FunctionConfig;
  readonly fetch: FetchLike;
  readonly runtime: Runtime;
  readonly logger: Logger;
  /** Overrides the static credentials from the config (ECR tokens). */
  readonly credentials?: CredentialSource;
  /** SDK settings for ECR where the default credential chain does not apply (Workers). */
  readonly ecrClientConfig?: ECRClientConfig;
  readonly retryPolicy?: RetryPolicy;
  readonly observer?: EngineObserver;
  readonly userAgent?: string;
}

export interface CloneEngine {
  /**
   * One result per image, in order; one failing image never fails the others. `signal`: the
   * caller stopped waiting; copies nobody else waits for are cancelled.
   */
  cloneAll(images: readonly string[], emit?: (event: CloneEvent) => void, signal?: AbortSignal): Promise<CloneResult[]>;
}

/**
 * The registries the operator named (the backup, those with credentials): a redirect may take
 * plain HTTP to them. As host[:port] of their API, the way a redirect's URL names them.
 */
function configuredHosts(config: FunctionConfig): Set<string> {
  const names = [config.backup.registry, ...config.credentials.keys()];
  return new Set(names.map((name) => registryApiHost(name)));
}

export function createEngine(options: EngineOptions): CloneEngine {
  const { config, logger, observer } = options;
  const retryPolicy = options.retryPolicy ?? DEFAULT_RETRY_POLICY;
  const logRetry = (info: { registry?: string; what: string; attempt: number; delayMs: number; error: unknown }) => {
    logger.warn(
      { what: info.what, attempt: info.attempt, delayMs: info.delayMs, error: describeError(info.error) },
      'retrying registry request',
    );
    observer?.retried?.(info);
  };
  let credentials = options.credentials ?? new StaticCredentials(config.credentials);
  let ecr: Ecr | undefined;
  if (config.ecr.region !== undefined) {
    ecr = new Ecr({
      registry: config.backup.registry,
      region: config.ecr.region,
      settings: config.ecr,
      fallback: credentials,
      ...(options.ecrClientConfig && { clientConfig: options.ecrClientConfig }),
    });
    credentials = ecr;
  }
  const client = new RegistryClient({
    fetch: options.fetch,
    credentials,
    insecureRegistries: config.insecureRegistries,
    configuredHosts: configuredHosts(config),
    stallMs: config.limits.stallMs,
    retryPolicy,
    onRetry: logRetry,
    ...(options.userAgent !== undefined && { userAgent: options.userAgent }),
  });
  const blobs = new BlobCopier({
    runtime: options.runtime,
    known: new KnownBlobs(),
    transferConcurrency: config.transferConcurrency,
    smallBlobsPerSlot: config.smallBlobsPerSlot,
    retryPolicy,
    onRetry: logRetry,
    stallMs: config.limits.stallMs,
  });
  const { sourceRegistries } = config;
  const images = new ImageCopier({
    repository: (name, access, scope) =>
      new Repository(client, name, access, { retryPolicy, signal: scope.signal, budget: scope.budget }),
    tree: new TreeCopier({
      blobs,
      limits: config.limits,
      blobConcurrency: config.blobConcurrency,
      smallBlobsPerSlot: config.smallBlobsPerSlot,
    }),
    backup: config.backup,
    limits: config.limits,
    ...(sourceRegistries && { sourceAllowed: (registry: string) => sourceRegistries.allows(registry) }),
    logger,
    ...(ecr && { prepareTarget: (repository: string) => ecr.ensureRepository(repository) }),
  });

  return {
    async cloneAll(list, emit, signal) {
      return mapLimit(list, config.imageConcurrency, async (image) => {
        observer?.cloneStarted?.();
        let result: CloneResult;
        try {
          result = await images.copy(image, emit, signal);
        } catch (error) {
          // copy() reports failures as results; this only guards against a bug taking others down.
          result = { source: String(image), status: 'failed', error: describeError(error), ms: 0 };
        }
        observer?.cloneFinished?.(result);
        return result;
      });
    },
  };
}
