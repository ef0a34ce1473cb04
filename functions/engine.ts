// Assembles the copy engine from the configuration and the runtime's pieces (fetch, how a stream
// keeps its length, a logger). Portable: the Node and Worker entry points both call this.

import type { ECRClientConfig } from '@aws-sdk/client-ecr';
import { describeError } from '../lib/errors.ts';
import { mapLimit } from '../lib/semaphore.ts';
import type { FunctionConfig } from './config.ts';
import { imageOfRequest, registryApiHost, type CloneEvent, type CloneResult, type ImageRequest } from './contract/index.ts';
import { BlobCopier, KnownBlobs, type Runtime } from './copy/blob.ts';
import { ImageCopier } from './copy/image.ts';
import { TreeCopier } from './copy/tree.ts';
import { Ecr } from './ecr.ts';
import type { Logger } from './log.ts';
import { RegistryClient } from './registry/client.ts';
import { StaticCredentials, type CredentialSource, type Credentials } from './registry/credentials.ts';
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
  cloneAll(images: readonly ImageRequest[], emit?: (event: CloneEvent) => void, signal?: AbortSignal): Promise<CloneResult[]>;
}

/** The entries of the auth file the function may use for itself: see createEngine. */
function sharedCredentials(config: FunctionConfig): Map<string, Credentials> {
  const shared = new Map<string, Credentials>();
  for (const [registry, entry] of config.credentials) {
    if (registry === config.backup.registry || config.sharedCredentialRegistries?.allows(registry)) shared.set(registry, entry);
  }
  return shared;
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
  // The function's own credentials: for the backup registry, and for the sources the operator
  // shares them with (SHARED_CREDENTIAL_REGISTRIES), as node-level credentials are. Any other
  // source is pulled with what the request brings for it (the workload's own), or anonymously.
  let credentials = options.credentials ?? new StaticCredentials(sharedCredentials(config));
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
  const clientFor = (source: CredentialSource) =>
    new RegistryClient({
      fetch: options.fetch,
      credentials: source,
      insecureRegistries: config.insecureRegistries,
      configuredHosts: configuredHosts(config),
      stallMs: config.limits.stallMs,
      retryPolicy,
      onRetry: logRetry,
      ...(options.userAgent !== undefined && { userAgent: options.userAgent }),
    });
  const client = clientFor(credentials);
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
    repository: (name, access, scope, ownCredentials) =>
      new Repository(
        // A request's own credentials get a client (so a token cache) of their own, for this copy
        // only: nothing they unlocked serves another request.
        ownCredentials === undefined ? client : clientFor(new StaticCredentials(new Map([[name.registry, ownCredentials]]))),
        name,
        access,
        { retryPolicy, signal: scope.signal, budget: scope.budget },
      ),
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
          result = { source: String(imageOfRequest(image)), status: 'failed', error: describeError(error), ms: 0 };
        }
        observer?.cloneFinished?.(result);
        return result;
      });
    },
  };
}
