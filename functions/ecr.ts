// AWS ECR as the backup registry: registry credentials from GetAuthorizationToken (the SDK's
// credential chain signs that call), cached until shortly before they expire, and repositories
// created on first use, because ECR does not create them on push.

import type { ECRClient, ECRClientConfig } from '@aws-sdk/client-ecr';
import type { EcrSettings } from './config.ts';
import type { CredentialSource, Credentials } from './registry/credentials.ts';

/** Renew this long before the token's expiry (tokens last 12 hours). */
const RENEW_BEFORE_MS = 15 * 60 * 1000;

export interface EcrOptions {
  /** The registry host the engine pushes to (the ECR host, or a stand-in in tests). */
  readonly registry: string;
  readonly region: string;
  readonly settings: EcrSettings;
  /** Extra SDK configuration (credentials or endpoint on Workers); Node uses the default chain. */
  readonly clientConfig?: ECRClientConfig;
  /** Credentials for every other registry (sources). */
  readonly fallback: CredentialSource;
  readonly now?: () => number;
}

type Sdk = typeof import('@aws-sdk/client-ecr');

export class Ecr implements CredentialSource {
  readonly #options: EcrOptions;
  /** The SDK is loaded on first use: several MiB of memory a function without ECR never pays. */
  #sdk: Promise<{ sdk: Sdk; client: ECRClient }> | undefined;
  readonly #now: () => number;
  #token: { credentials: Credentials; renewAt: number } | undefined;
  #pendingToken: Promise<Credentials> | undefined;
  readonly #repositories = new Map<string, Promise<boolean>>();

  constructor(options: EcrOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  #loadSdk(): Promise<{ sdk: Sdk; client: ECRClient }> {
    this.#sdk ??= import('@aws-sdk/client-ecr').then((sdk) => ({
      sdk,
      client: new sdk.ECRClient({ region: this.#options.region, ...this.#options.clientConfig }),
    }));
    return this.#sdk;
  }

  async get(registry: string): Promise<Credentials | undefined> {
    if (registry !== this.#options.registry) return this.#options.fallback.get(registry);
    if (this.#token && this.#token.renewAt > this.#now()) return this.#token.credentials;
    this.#pendingToken ??= this.#fetchToken().finally(() => (this.#pendingToken = undefined));
    return this.#pendingToken;
  }

  invalidate(registry: string): boolean {
    if (registry !== this.#options.registry) return this.#options.fallback.invalidate?.(registry) ?? false;
    this.#token = undefined;
    return true;
  }

  async #fetchToken(): Promise<Credentials> {
    const { sdk, client } = await this.#loadSdk();
    const output = await client.send(new sdk.GetAuthorizationTokenCommand({}));
    const data = output.authorizationData?.[0];
    if (!data?.authorizationToken) throw new Error('ECR GetAuthorizationToken returned no token');
    const decoded = atob(data.authorizationToken);
    const colon = decoded.indexOf(':');
    if (colon <= 0) throw new Error('ECR GetAuthorizationToken returned a token of an unexpected form');
    const credentials = { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    const expiresAt = data.expiresAt?.getTime() ?? this.#now() + 60 * 60 * 1000;
    this.#token = { credentials, renewAt: Math.max(this.#now(), expiresAt - RENEW_BEFORE_MS) };
    return credentials;
  }

  /**
   * Creates the repository once; one that already exists (a race, or an earlier run) is fine.
   * Resolves true for the one call that created it: that caller knows the repository is empty.
   */
  ensureRepository(repository: string): Promise<boolean> {
    const earlier = this.#repositories.get(repository);
    if (earlier) return earlier.then(() => false);
    const created = this.#create(repository).catch((error: unknown) => {
      this.#repositories.delete(repository);
      throw error;
    });
    this.#repositories.set(repository, created);
    return created;
  }

  /** True when this call created the repository, false when it already existed. */
  async #create(repository: string): Promise<boolean> {
    const { settings } = this.#options;
    const { sdk, client } = await this.#loadSdk();
    try {
      await client.send(
        new sdk.CreateRepositoryCommand({
          repositoryName: repository,
          imageTagMutability: settings.tagMutability,
          imageScanningConfiguration: { scanOnPush: settings.scanOnPush },
          encryptionConfiguration: {
            encryptionType: settings.encryption,
            ...(settings.encryption === 'KMS' && settings.kmsKey && { kmsKey: settings.kmsKey }),
          },
          tags: [{ Key: 'created-by', Value: 'image-clone-controller' }],
        }),
      );
      return true;
    } catch (error) {
      if ((error as Error).name === 'RepositoryAlreadyExistsException') return false;
      throw new Error(`ECR CreateRepository ${repository}: ${(error as Error).name}: ${(error as Error).message}`);
    }
  }
}
